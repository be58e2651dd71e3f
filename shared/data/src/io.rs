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

/// The batch size a model's inputs fix, if they do: every input with a first dimension has
/// the same number there (a model exported for `[1, 3, 48, 320]` runs one row at a time).
pub fn fixed_batch(inputs: &[IoSpec]) -> Option<usize> {
    let firsts: Vec<i64> = inputs.iter().filter_map(|i| i.shape.first().copied()).collect();
    let first = *firsts.first()?;
    (first > 0 && firsts.iter().all(|&d| d == first)).then_some(first as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_batch_is_the_smallest_fixed_first_dim() {
        let spec = |shape: Vec<i64>| IoSpec { name: "x".into(), elem: DataType::Float, shape };
        assert_eq!(fixed_batch(&[spec(vec![-1, 3]), spec(vec![-1])]), None);
        assert_eq!(fixed_batch(&[spec(vec![1, 3, 48, 320])]), Some(1));
        assert_eq!(fixed_batch(&[spec(vec![-1, 3]), spec(vec![2, 1, 128])]), None);
        assert_eq!(fixed_batch(&[spec(vec![4, 3]), spec(vec![4, 2]), spec(vec![])]), Some(4));
    }
}
