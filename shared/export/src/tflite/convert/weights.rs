//! Weights for the converter: constant `DequantizeLinear` folded to float with its integer
//! codes kept, Tamp's own int8 codes reused where TFLite's spec allows them (symmetric, zero
//! point 0, per output channel), and a symmetric per-channel quantizer for the rest.

use ndarray::{ArrayD, Axis};
use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::proto::tensor_proto::DataType;

use super::{Konst, QConst, elem_of};

pub(super) fn dequantize(n: &NodeProto, k: &[&Konst], ins: &[&str], graph: &tamp_onnx::proto::GraphProto) -> Option<Konst> {
    let x = k[0];
    let xi = x.i.as_ref()?;
    let scale: Vec<f32> = k.get(1)?.f.iter().copied().collect();
    let zp: Vec<i64> = k.get(2).and_then(|z| z.i.as_ref()).map_or_else(|| vec![0; scale.len()], |z| z.iter().copied().collect());
    let rank = xi.ndim() as i64;
    let axis = if scale.len() > 1 {
        let a = attr_int(n, "axis", 1);
        usize::try_from(if a < 0 { a + rank } else { a }).ok()?
    } else {
        0
    };
    let mut f = xi.mapv(|v| v as f32);
    if scale.len() == 1 {
        let (s, z) = (scale[0], zp[0] as f32);
        f.mapv_inplace(|v| (v - z) * s);
    } else {
        for (c, mut lane) in f.axis_iter_mut(Axis(axis)).enumerate() {
            let (s, z) = (scale[c], zp.get(c).copied().unwrap_or(0) as f32);
            lane.mapv_inplace(|v| (v - z) * s);
        }
    }
    let elem = graph.initializer.iter().find(|t| t.name.as_deref() == Some(ins[0])).map_or(DataType::Undefined, elem_of);
    Some(Konst { f, i: None, q: Some(QConst { q: xi.clone(), scale, zp, axis, elem }) })
}

/// Symmetric int8 per-channel quantization along `axis` (scale = max|w| / 127).
pub(super) fn symmetric_per_channel(w: &ArrayD<f32>, axis: usize) -> (ArrayD<i8>, Vec<f32>) {
    let scales: Vec<f32> = w.axis_iter(Axis(axis)).map(|lane| (lane.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).max(f32::MIN_POSITIVE)).collect();
    let mut q = ArrayD::<i8>::zeros(w.raw_dim());
    for (c, (mut ql, wl)) in q.axis_iter_mut(Axis(axis)).zip(w.axis_iter(Axis(axis))).enumerate() {
        let s = scales[c];
        ql.zip_mut_with(&wl, |q, &v| *q = (v / s).round().clamp(-127.0, 127.0) as i8);
    }
    (q, scales)
}

/// The int8 weights of an int8 op in the weight's ONNX layout (output channels on `axis`):
/// Tamp's own symmetric int8 codes when the QDQ weight has them, else a fresh symmetric
/// per-channel quantization of the float view (uint8 or asymmetric weights).
pub(super) fn int8_weights(k: &Konst, wf: &ArrayD<f32>, axis: usize) -> (ArrayD<i8>, Vec<f32>) {
    if let Some(q) = &k.q
        && q.axis == axis
        && q.q.shape() == wf.shape()
        && let Some(codes) = q.symmetric_codes()
    {
        let scale = if q.scale.len() == 1 { vec![q.scale[0]; wf.shape()[axis]] } else { q.scale.clone() };
        return (codes, scale);
    }
    symmetric_per_channel(wf, axis)
}

impl QConst {
    /// The codes as symmetric int8 with zero point 0, exactly: int8 codes at zero point 0, or
    /// the uint8 codes Tamp writes for CPUs without VNNI (zero point 128) shifted by −128.
    /// `None` for asymmetric weights (they are re-quantized).
    pub(super) fn symmetric_codes(&self) -> Option<ArrayD<i8>> {
        match self.elem {
            DataType::Int8 if self.zp.iter().all(|&z| z == 0) => Some(self.q.mapv(|v| v.clamp(-128, 127) as i8)),
            DataType::Uint8 if self.zp.iter().all(|&z| z == 128) => Some(self.q.mapv(|v| (v - 128).clamp(-128, 127) as i8)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::IxDyn;

    use super::*;

    #[test]
    fn uint8_codes_at_zero_point_128_are_the_same_symmetric_weights() {
        let q = |elem, zp: i64, codes: Vec<i64>| QConst {
            q: ArrayD::from_shape_vec(IxDyn(&[3]), codes).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[3]))),
            scale: vec![0.5],
            zp: vec![zp],
            axis: 0,
            elem,
        };
        let i8s = q(DataType::Int8, 0, vec![-127, 0, 127]).symmetric_codes();
        let u8s = q(DataType::Uint8, 128, vec![1, 128, 255]).symmetric_codes();
        assert_eq!(i8s, u8s);
        assert!(q(DataType::Uint8, 100, vec![1, 128, 255]).symmetric_codes().is_none());
    }

    #[test]
    fn per_channel_codes_round_trip_within_half_a_step() {
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5, -1.0, 0.25, 2.0, 0.0, -0.3]).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[2, 3])));
        let (q, s) = symmetric_per_channel(&w, 0);
        assert_eq!(q[[0, 1]], -127);
        assert_eq!(q[[1, 0]], 127);
        for ((c, _), (&qv, &wv)) in w.indexed_iter().map(|(i, _)| (i[0], i[1])).zip(q.iter().zip(w.iter())) {
            assert!((f32::from(qv) * s[c] - wv).abs() <= s[c] / 2.0 + 1e-7);
        }
    }
}
