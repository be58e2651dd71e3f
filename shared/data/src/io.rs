//! A model input or output as a session sees it: what [`crate::Dataset::check_against`]
//! checks arrays against (names, element types, shapes).

use serde::Serialize;
use tamp_onnx::proto::tensor_proto::DataType;

/// A model input or output as the session sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoSpec {
    pub name: String,
    #[serde(serialize_with = "ser_data_type")]
    pub elem: DataType,
    /// -1 for dynamic dimensions.
    pub shape: Vec<i64>,
}

fn ser_data_type<S: serde::Serializer>(dt: &DataType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(dt.as_str_name())
}
