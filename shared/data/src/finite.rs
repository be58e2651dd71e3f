//! The NaN/Inf check every loaded array goes through, and the vectorised min/max scan it
//! shares with calibration (one pass finds the range and whether anything is non-finite).

use tamp_onnx::TensorValue;

/// Min, max and whether every element is finite, in one pass the compiler vectorizes
/// (16 independent lanes; `x · 0` is NaN exactly when `x` is NaN or infinite).
pub fn min_max(a: &[f32]) -> (f32, f32, bool) {
    const L: usize = 16;
    let (mut lo, mut hi, mut bad) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L], [0.0f32; L]);
    let chunks = a.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            let x = c[i];
            lo[i] = if x < lo[i] { x } else { lo[i] };
            hi[i] = if x > hi[i] { x } else { hi[i] };
            bad[i] += x * 0.0;
        }
    }
    for (i, &x) in rest.iter().enumerate() {
        lo[i] = if x < lo[i] { x } else { lo[i] };
        hi[i] = if x > hi[i] { x } else { hi[i] };
        bad[i] += x * 0.0;
    }
    let lo = lo.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    (lo, hi, bad.iter().all(|b| !b.is_nan()))
}

/// Non-finite values found in one array.
pub(crate) struct Bad {
    pub nan: usize,
    pub inf: usize,
    pub first: usize,
}

pub(crate) fn non_finite_message(nan: usize, inf: usize, first: Option<usize>) -> String {
    format!("holds {nan} NaN and {inf} infinite values (first at flat index {}); clean the data before evaluating", first.unwrap_or(0))
}

pub(crate) fn scan_finite(v: &TensorValue) -> std::result::Result<(), Bad> {
    macro_rules! scan {
        ($a:expr) => {{
            let (mut nan, mut inf, mut first) = (0usize, 0usize, None);
            for (i, x) in $a.iter().enumerate() {
                if !x.is_finite() {
                    if x.is_nan() {
                        nan += 1
                    } else {
                        inf += 1
                    }
                    first.get_or_insert(i);
                }
            }
            if nan + inf > 0 {
                return Err(Bad { nan, inf, first: first.unwrap_or(0) });
            }
        }};
    }
    match v {
        // The common case, all finite, in one vectorised pass; the scan finds what and where.
        TensorValue::F32(a) if a.as_slice().is_some_and(|s| min_max(s).2) => {}
        TensorValue::F32(a) => scan!(a),
        TensorValue::F64(a) => scan!(a),
        _ => {}
    }
    Ok(())
}

pub(crate) fn check_finite(v: &TensorValue) -> std::result::Result<(), String> {
    scan_finite(v).map_err(|b| non_finite_message(b.nan, b.inf, Some(b.first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_sees_every_lane_and_every_non_finite_value() {
        let mut v: Vec<f32> = (0..37).map(|i| i as f32 - 5.0).collect();
        assert_eq!(min_max(&v), (-5.0, 31.0, true));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 15, 16, 36] {
                let keep = v[at];
                v[at] = bad;
                assert!(!min_max(&v).2, "{bad} at {at}");
                v[at] = keep;
            }
        }
        assert_eq!(min_max(&[]), (f32::INFINITY, f32::NEG_INFINITY, true));
    }

    #[test]
    fn the_scan_counts_and_places_non_finite_values() {
        let v = TensorValue::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[4]), vec![1.0, f32::NAN, f32::INFINITY, f32::NAN]).unwrap());
        let b = scan_finite(&v).unwrap_err();
        assert_eq!((b.nan, b.inf, b.first), (2, 1, 1));
        assert!(check_finite(&v).unwrap_err().contains("2 NaN and 1 infinite"));
    }
}
