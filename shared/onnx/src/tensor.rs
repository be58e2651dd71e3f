//! Tensor ⇄ `ndarray` conversion. Reads every storage form exporters use (`raw_data`
//! little-endian bytes and the typed `*_data` fields); writes `raw_data`.

use ndarray::{ArrayD, IxDyn};

use crate::error::OnnxError;
use crate::proto::TensorProto;
use crate::proto::tensor_proto::DataType;

/// A Rust scalar type with an ONNX tensor element type.
pub trait Element: Copy + Default + 'static {
    /// The ONNX element type.
    const DATA_TYPE: DataType;
    /// Size in bytes of one element in `raw_data`.
    const SIZE: usize;
    /// Decodes one element from little-endian bytes of length `SIZE`.
    fn from_le(bytes: &[u8]) -> Self;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads the typed field ONNX uses for this type when `raw_data` is absent.
    fn from_typed(t: &TensorProto) -> Vec<Self>;
}

macro_rules! element {
    ($t:ty, $dt:ident, $size:expr, |$tp:ident| $typed:expr) => {
        impl Element for $t {
            const DATA_TYPE: DataType = DataType::$dt;
            const SIZE: usize = $size;
            fn from_le(bytes: &[u8]) -> Self {
                let mut b = [0u8; $size];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_typed($tp: &TensorProto) -> Vec<Self> {
                $typed
            }
        }
    };
}

element!(f32, Float, 4, |t| t.float_data.clone());
element!(f64, Double, 8, |t| t.double_data.clone());
element!(i64, Int64, 8, |t| t.int64_data.clone());
// ONNX stores int32, int8, uint8 (and bool) in `int32_data`, one value per entry.
element!(i32, Int32, 4, |t| t.int32_data.clone());
element!(i8, Int8, 1, |t| t.int32_data.iter().map(|&v| v as i8).collect());
element!(u8, Uint8, 1, |t| t.int32_data.iter().map(|&v| v as u8).collect());

impl Element for bool {
    const DATA_TYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;
    fn from_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn from_typed(t: &TensorProto) -> Vec<Self> {
        t.int32_data.iter().map(|&v| v != 0).collect()
    }
}

/// The tensor's name, or `<unnamed>`.
pub fn tensor_name(t: &TensorProto) -> &str {
    t.name.as_deref().unwrap_or("<unnamed>")
}

/// The tensor's shape as `usize` dims.
pub fn dims(t: &TensorProto) -> Result<Vec<usize>, OnnxError> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| OnnxError::Tensor { tensor: tensor_name(t).to_owned(), reason: format!("negative dimension {d}") }))
        .collect()
}

/// Number of elements the tensor's dims describe (`usize::MAX` when the product overflows:
/// dims come from user bytes, and `[2^40, 2^40]` must not panic).
pub fn element_count(t: &TensorProto) -> usize {
    t.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d.max(0)).unwrap_or(usize::MAX))).unwrap_or(usize::MAX)
}

/// The tensor's element type.
pub fn data_type(t: &TensorProto) -> DataType {
    DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined)
}

/// Size in bytes of one element of `dt`, for the fixed-size numeric types.
pub fn element_size(dt: DataType) -> Option<usize> {
    use DataType::*;
    Some(match dt {
        Float | Int32 | Uint32 => 4,
        Double | Int64 | Uint64 | Complex64 => 8,
        Complex128 => 16,
        Int16 | Uint16 | Float16 | Bfloat16 => 2,
        Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz | Float8e8m0 => 1,
        _ => return None,
    })
}

/// Bytes the tensor's payload occupies (raw or typed), used for size reports.
pub fn payload_bytes(t: &TensorProto) -> usize {
    if let Some(raw) = &t.raw_data {
        return raw.len();
    }
    element_size(data_type(t)).map_or(0, |s| s.saturating_mul(element_count(t)))
}

/// Decodes a tensor into an `ndarray` of element type `T`.
pub fn to_array<T: Element>(t: &TensorProto) -> Result<ArrayD<T>, OnnxError> {
    let name = tensor_name(t);
    let err = |reason: String| OnnxError::Tensor { tensor: name.to_owned(), reason };
    let dt = data_type(t);
    if dt != T::DATA_TYPE {
        return Err(err(format!("element type is {dt:?}, expected {:?}", T::DATA_TYPE)));
    }
    if t.data_location == Some(1) {
        return Err(err("data is still external; load the model with Model::load".into()));
    }
    let shape = dims(t)?;
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(T::SIZE).map(|_| n))
        .ok_or_else(|| err(format!("dims {shape:?} describe more elements than memory can hold")))?;
    let values: Vec<T> = match &t.raw_data {
        Some(raw) => {
            if raw.len() != n * T::SIZE {
                return Err(err(format!("raw_data holds {} bytes but dims {shape:?} need {}", raw.len(), n * T::SIZE)));
            }
            raw.chunks_exact(T::SIZE).map(T::from_le).collect()
        }
        None => T::from_typed(t),
    };
    if values.len() != n {
        return Err(err(format!("holds {} values but dims {shape:?} need {n}", values.len())));
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| err(e.to_string()))
}

/// Encodes an `ndarray` as a named tensor with `raw_data`.
pub fn from_array<T: Element>(name: &str, a: &ArrayD<T>) -> TensorProto {
    let mut raw = Vec::with_capacity(a.len() * T::SIZE);
    for &v in a.iter() {
        v.write_le(&mut raw);
    }
    TensorProto {
        name: Some(name.to_owned()),
        dims: a.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(T::DATA_TYPE as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// Two's-complement int4 codes packed two per byte, the first in the low nibble (ONNX's
/// INT4 layout).
pub fn pack_int4(codes: &[i8]) -> Vec<u8> {
    codes.chunks(2).map(|p| (p[0] as u8 & 0x0f) | (p.get(1).map_or(0, |&h| (h as u8 & 0x0f) << 4))).collect()
}

/// The `n` int4 codes [`pack_int4`] packed.
pub fn unpack_int4(raw: &[u8], n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| {
            let nib = if i.is_multiple_of(2) { raw[i / 2] & 0x0f } else { raw[i / 2] >> 4 };
            ((nib << 4) as i8) >> 4
        })
        .collect()
}

/// A decoded tensor of any element type Tamp computes with.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValue {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
}

impl TensorValue {
    /// Decodes any supported element type.
    pub fn from_proto(t: &TensorProto) -> Result<Self, OnnxError> {
        Ok(match data_type(t) {
            DataType::Float => Self::F32(to_array(t)?),
            DataType::Double => Self::F64(to_array(t)?),
            DataType::Int64 => Self::I64(to_array(t)?),
            DataType::Int32 => Self::I32(to_array(t)?),
            DataType::Int8 => Self::I8(to_array(t)?),
            DataType::Uint8 => Self::U8(to_array(t)?),
            DataType::Bool => Self::Bool(to_array(t)?),
            other => {
                return Err(OnnxError::Tensor { tensor: tensor_name(t).to_owned(), reason: format!("element type {other:?} is not supported for decoding") });
            }
        })
    }

    /// Shape of the tensor.
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::F32(a) => a.shape(),
            Self::F64(a) => a.shape(),
            Self::I64(a) => a.shape(),
            Self::I32(a) => a.shape(),
            Self::I8(a) => a.shape(),
            Self::U8(a) => a.shape(),
            Self::Bool(a) => a.shape(),
        }
    }

    /// ONNX element type.
    pub fn data_type(&self) -> DataType {
        match self {
            Self::F32(_) => DataType::Float,
            Self::F64(_) => DataType::Double,
            Self::I64(_) => DataType::Int64,
            Self::I32(_) => DataType::Int32,
            Self::I8(_) => DataType::Int8,
            Self::U8(_) => DataType::Uint8,
            Self::Bool(_) => DataType::Bool,
        }
    }

    /// Row `i` of the leading axis, without that axis (a `[rows, 4, 1, 64]` array's row `i`
    /// is a `[4, 1, 64]` tensor). `None` for a scalar or a row out of range.
    pub fn row(&self, i: usize) -> Option<Self> {
        macro_rules! at {
            ($a:expr, $v:ident) => {
                ($a.ndim() > 0 && i < $a.shape()[0]).then(|| Self::$v($a.index_axis(ndarray::Axis(0), i).to_owned()))
            };
        }
        match self {
            Self::F32(a) => at!(a, F32),
            Self::F64(a) => at!(a, F64),
            Self::I64(a) => at!(a, I64),
            Self::I32(a) => at!(a, I32),
            Self::I8(a) => at!(a, I8),
            Self::U8(a) => at!(a, U8),
            Self::Bool(a) => at!(a, Bool),
        }
    }

    /// One tensor from per-row results, rows first: joined along their own leading axis when
    /// every part has a leading axis of 1 (a batch-major output computed one row at a time),
    /// stacked on a new leading axis otherwise (an output with no batch axis, as a recurrent
    /// state `[2, 1, 64]` or a score vector `[4]`). Parts must share element type and shape.
    pub fn join_rows(parts: &[Self]) -> Result<Self, OnnxError> {
        let err = |reason: String| OnnxError::Tensor { tensor: "rows".into(), reason };
        let first = parts.first().ok_or_else(|| err("no rows to join".into()))?;
        let batch_major = parts.iter().all(|p| p.shape().first() == Some(&1));
        macro_rules! join {
            ($v:ident) => {{
                let views = parts
                    .iter()
                    .map(|p| match p {
                        Self::$v(a) => Ok(a.view()),
                        other => Err(err(format!("rows of different element types ({:?} and {:?})", first.data_type(), other.data_type()))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let joined = if batch_major { ndarray::concatenate(ndarray::Axis(0), &views) } else { ndarray::stack(ndarray::Axis(0), &views) };
                Self::$v(joined.map_err(|e| err(format!("rows of different shapes: {e}")))?)
            }};
        }
        Ok(match first {
            Self::F32(_) => join!(F32),
            Self::F64(_) => join!(F64),
            Self::I64(_) => join!(I64),
            Self::I32(_) => join!(I32),
            Self::I8(_) => join!(I8),
            Self::U8(_) => join!(U8),
            Self::Bool(_) => join!(Bool),
        })
    }

    /// Encodes back into a named tensor.
    pub fn to_proto(&self, name: &str) -> TensorProto {
        match self {
            Self::F32(a) => from_array(name, a),
            Self::F64(a) => from_array(name, a),
            Self::I64(a) => from_array(name, a),
            Self::I32(a) => from_array(name, a),
            Self::I8(a) => from_array(name, a),
            Self::U8(a) => from_array(name, a),
            Self::Bool(a) => from_array(name, a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn f32_roundtrip(values in proptest::collection::vec(-1e6f32..1e6, 1..64)) {
            let n = values.len();
            let a = ArrayD::from_shape_vec(IxDyn(&[n]), values).unwrap();
            let back: ArrayD<f32> = to_array(&from_array("w", &a)).unwrap();
            prop_assert_eq!(a, back);
        }
    }

    #[test]
    fn rows_split_and_join_back() {
        let a = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[3, 2, 1]), |i| (i[0] * 10 + i[1]) as f32));
        let rows: Vec<TensorValue> = (0..3).map(|i| a.row(i).unwrap()).collect();
        assert_eq!(rows[1].shape(), [2, 1]);
        assert_eq!(TensorValue::join_rows(&rows).unwrap(), a, "no batch axis: stacked");
        let batch: Vec<TensorValue> = rows
            .iter()
            .map(|r| match r {
                TensorValue::F32(x) => TensorValue::F32(x.clone().insert_axis(ndarray::Axis(0))),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(TensorValue::join_rows(&batch).unwrap(), a.clone(), "leading 1: concatenated");
        assert!(a.row(3).is_none());
        assert!(TensorValue::join_rows(&[a.clone(), TensorValue::I64(ArrayD::zeros(IxDyn(&[3, 2, 1])))]).is_err());
    }

    #[test]
    fn typed_fields_are_read() {
        let t = TensorProto {
            name: Some("x".into()),
            dims: vec![2, 2],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![1, 2, 3, 4],
            ..Default::default()
        };
        let a: ArrayD<i64> = to_array(&t).unwrap();
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let u =
            TensorProto { name: Some("u".into()), dims: vec![3], data_type: Some(DataType::Uint8 as i32), int32_data: vec![0, 7, 255], ..Default::default() };
        assert_eq!(TensorValue::from_proto(&u).unwrap().shape(), &[3]);
    }

    #[test]
    fn wrong_type_and_size_are_errors() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
        let mut t = from_array("w", &a);
        assert!(to_array::<i64>(&t).unwrap_err().to_string().contains("expected Int64"));
        t.dims = vec![7];
        assert!(to_array::<f32>(&t).unwrap_err().to_string().contains("raw_data holds 24 bytes"));
    }
}
