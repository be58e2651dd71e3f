//! Shape arithmetic for the converter: broadcasting, ONNX Reshape targets, SAME/VALID
//! padding and convolution output sizes.

use crate::tflite::ir::Padding;

/// Numpy broadcasting of two shapes.
pub(super) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// `SAME` when `pads` are what TFLite's SAME padding gives for this input, `VALID` when
/// there are none, else `None` (an explicit `PAD` is needed).
pub(super) fn padding_for(input: [usize; 2], kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2], pads: [usize; 4]) -> Option<Padding> {
    if pads.iter().all(|&p| p == 0) {
        return Some(Padding::Valid);
    }
    let mut same = [0usize; 4];
    for d in 0..2 {
        let k = (kernel[d] - 1) * dilation[d] + 1;
        let out = input[d].div_ceil(stride[d]);
        let total = ((out - 1) * stride[d] + k).saturating_sub(input[d]);
        same[d] = total / 2;
        same[d + 2] = total - total / 2;
    }
    (same == pads).then_some(Padding::Same)
}

pub(super) fn conv_out(input: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize) -> Option<usize> {
    let eff = (k - 1) * d + 1;
    (input + pb + pe).checked_sub(eff).map(|v| v / s + 1)
}

pub(super) fn reshape_dims(from: &[usize], to: impl Iterator<Item = i64>) -> Option<Vec<usize>> {
    let total: usize = from.iter().product();
    let to: Vec<i64> = to.collect();
    let mut out = Vec::with_capacity(to.len());
    let mut infer = None;
    for (i, &d) in to.iter().enumerate() {
        match d {
            0 => out.push(*from.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(usize::try_from(d).ok()?),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}
