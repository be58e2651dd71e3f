//! Activation statistics for calibration, gathered in one streaming pass. Passes request
//! what they need per value ([`StatRequest`]); the requests are merged, every value is
//! captured batch by batch, and each keeps a running min/max and (when asked) a fixed-size
//! histogram that widens itself by merging bins, so memory is bounded by the histogram,
//! never by the number of samples. Thresholds are then derived by min-max, percentile,
//! entropy (KL, TensorRT-style) or MSE.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tamp_onnx::{Model, TensorValue};

use crate::capture::capture;
use crate::error::{EngineError, Result};
use crate::runtime::SessionConfig;
use tamp_data::{Dataset, min_max};

/// How a clipping range is chosen from the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method", deny_unknown_fields)]
pub enum Method {
    MinMax,
    /// Symmetric threshold at this percentile of |x| (e.g. 99.99).
    Percentile {
        percentile: f64,
    },
    /// Threshold minimising KL divergence between the clipped and the 8-bit distribution.
    Entropy,
    /// Threshold minimising expected squared quantisation error for symmetric int8.
    Mse,
    /// Each of [`Method::AUTO_CANDIDATES`] tried on the calibration rows; the one whose
    /// quantized model's outputs are closest to fp32's is kept ([`crate::ptq::calibrate`]).
    Auto,
}

impl From<&tamp_domain::recipe::Calibration> for Method {
    /// The recipe's calibration settings as a range rule (the one mapping from recipe to engine).
    fn from(c: &tamp_domain::recipe::Calibration) -> Self {
        use tamp_domain::recipe::CalibrationMethod as M;
        match c.method {
            M::Minmax => Self::MinMax,
            M::Kl => Self::Entropy,
            M::Percentile => Self::Percentile { percentile: c.percentile },
            M::Mse => Self::Mse,
            M::Auto => Self::Auto,
        }
    }
}

impl Method {
    /// What `auto` chooses among: no clipping, clipping at three tail masses (the right one
    /// differs by model: a table recogniser wants 99.99, a text recogniser 99.999), and KL.
    pub const AUTO_CANDIDATES: [Method; 5] = [
        Method::MinMax,
        Method::Percentile { percentile: 99.9 },
        Method::Percentile { percentile: 99.99 },
        Method::Percentile { percentile: 99.999 },
        Method::Entropy,
    ];

    fn needs_histogram(self) -> bool {
        !matches!(self, Self::MinMax)
    }

    /// A short name for messages: `minmax`, `percentile 99.99`, `kl`, `mse`, `auto`.
    pub fn label(self) -> String {
        match self {
            Self::MinMax => "minmax".into(),
            Self::Percentile { percentile } => format!("percentile {percentile}"),
            Self::Entropy => "kl".into(),
            Self::Mse => "mse".into(),
            Self::Auto => "auto".into(),
        }
    }
}

/// What one pass wants to know about one value.
#[derive(Debug, Clone, PartialEq)]
pub struct StatRequest {
    pub value: String,
    pub method: Method,
}

/// A symmetric histogram of values over [-range, range] with a fixed number of bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bins: Vec<u64>,
    pub range: f32,
}

impl Histogram {
    /// `bins` is rounded down to a multiple of 4 (the centre is a bin edge, and widening
    /// merges pairs into the middle half).
    pub fn new(bins: usize) -> Self {
        Self { bins: vec![0; bins.max(4) & !3], range: 0.0 }
    }

    fn width(&self) -> f32 {
        2.0 * self.range / self.bins.len() as f32
    }

    /// Doubles the range until it covers `amax`, merging bin pairs toward the centre.
    fn widen(&mut self, amax: f32) {
        if self.range == 0.0 {
            self.range = amax.max(f32::MIN_POSITIVE);
            return;
        }
        let n = self.bins.len();
        while self.range < amax {
            let mut merged = vec![0u64; n];
            // Old bin i covers [-r + i·w, …); after doubling, bins n/4 .. 3n/4 hold the old range.
            for (i, &c) in self.bins.iter().enumerate() {
                merged[n / 4 + i / 2] += c;
            }
            self.bins = merged;
            self.range *= 2.0;
        }
    }

    /// Adds values (all finite).
    pub fn add(&mut self, values: &[f32]) {
        let (lo, hi, _) = min_max(values);
        self.add_bounded(values, lo.abs().max(hi.abs()));
    }

    /// Adds values whose largest magnitude `amax` is already known.
    fn add_bounded(&mut self, values: &[f32], amax: f32) {
        if values.is_empty() {
            return;
        }
        if amax > self.range || self.range == 0.0 {
            self.widen(amax);
        }
        let (n, inv_w, r) = (self.bins.len(), 1.0 / self.width(), self.range);
        let bin = |v: f32| (((v + r) * inv_w) as usize).min(n - 1);
        // Four interleaved sub-histograms: runs of equal values (a ReLU's zeros) would
        // otherwise serialise on one counter's store-to-load latency.
        let mut sub = vec![[0u32; 4]; n];
        let chunks = values.chunks_exact(4);
        for &v in chunks.remainder() {
            self.bins[bin(v)] += 1;
        }
        for (k, c) in chunks.enumerate() {
            for (j, &v) in c.iter().enumerate() {
                sub[bin(v)][j] += 1;
            }
            // Flush before a u32 lane could overflow.
            if k % (1 << 28) == (1 << 28) - 1 {
                for (b, s) in self.bins.iter_mut().zip(sub.iter_mut()) {
                    *b += s.iter().map(|&x| u64::from(x)).sum::<u64>();
                    *s = [0; 4];
                }
            }
        }
        for (b, s) in self.bins.iter_mut().zip(&sub) {
            *b += s.iter().map(|&x| u64::from(x)).sum::<u64>();
        }
    }

    /// Counts of |x| in n/2 bins over [0, range].
    pub fn abs_bins(&self) -> Vec<u64> {
        let half = self.bins.len() / 2;
        (0..half).map(|i| self.bins[half + i] + self.bins[half - 1 - i]).collect()
    }

    pub fn total(&self) -> u64 {
        self.bins.iter().sum()
    }
}

/// Running statistics of one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueStats {
    pub min: f32,
    pub max: f32,
    pub count: u64,
    pub histogram: Option<Histogram>,
}

/// The clipping range chosen for one value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl ValueStats {
    /// The range `method` picks (symmetric methods return [-t, t] clipped to the observed
    /// range, so a non-negative activation keeps min = 0 for asymmetric quantisation).
    pub fn range(&self, method: Method) -> Result<Range> {
        let sym = |t: f32| Range { min: (-t).max(self.min), max: t.min(self.max) };
        let hist = || self.histogram.as_ref().ok_or_else(|| EngineError::Config("a histogram method was not requested during calibration".into()));
        Ok(match method {
            Method::MinMax => Range { min: self.min, max: self.max },
            Method::Percentile { percentile } => {
                let (lo, hi) = percentile_range(hist()?, percentile);
                Range { min: lo.max(self.min), max: hi.min(self.max) }
            }
            // uint8 spends all 256 levels on [0, t] for non-negative values, 128 per side otherwise.
            Method::Entropy => sym(entropy_threshold(hist()?, if self.min >= 0.0 { 256 } else { 128 })),
            Method::Mse => sym(mse_threshold(hist()?, 127.5)),
            Method::Auto => {
                return Err(EngineError::Config("`auto` names no range rule of its own: it is resolved to one of its candidates at calibration".into()));
            }
        })
    }
}

fn bin_edge(h: &Histogram, abs_index: usize) -> f32 {
    (abs_index as f32) * h.width()
}

/// Smallest threshold below which `percentile`% of |x| lies.
pub fn percentile_threshold(h: &Histogram, percentile: f64) -> f32 {
    let abs = h.abs_bins();
    let target = (h.total() as f64 * percentile.clamp(0.0, 100.0) / 100.0).ceil() as u64;
    let mut acc = 0;
    for (i, &c) in abs.iter().enumerate() {
        acc += c;
        if acc >= target {
            return bin_edge(h, i + 1);
        }
    }
    h.range
}

/// The range keeping `percentile`% of the values, the rest cut evenly from both tails of the
/// signed histogram (as ONNX Runtime's asymmetric percentile calibrator does): a tail that
/// is a single spike (ReLU's zeros) is kept whole.
pub fn percentile_range(h: &Histogram, percentile: f64) -> (f32, f32) {
    let total = h.total();
    let cut = (total as f64 * (100.0 - percentile.clamp(0.0, 100.0)) / 200.0).floor() as u64;
    let (n, w) = (h.bins.len(), h.width());
    let mut acc = 0;
    let lo = h.bins.iter().position(|&c| {
        acc += c;
        acc > cut
    });
    acc = 0;
    let hi = h.bins.iter().rposition(|&c| {
        acc += c;
        acc > cut
    });
    match (lo, hi) {
        (Some(lo), Some(hi)) => (-h.range + lo as f32 * w, -h.range + (hi + 1).min(n) as f32 * w),
        _ => (0.0, 0.0),
    }
}

/// TensorRT's entropy calibration: for each candidate threshold bin i ≥ `levels`, clip the
/// |x| histogram at i (outliers folded into the last bin), quantise it to `levels` bins and
/// expand back; pick the i with the smallest KL(P‖Q). The zero bin is flattened to its
/// neighbour first, as NVIDIA's reference implementation does: after a ReLU it holds half the
/// mass, and smoothing it would otherwise dominate KL and always pick the smallest clip.
pub fn entropy_threshold(h: &Histogram, levels: usize) -> f32 {
    let mut abs: Vec<f64> = h.abs_bins().into_iter().map(|c| c as f64).collect();
    if abs.len() > 1 {
        abs[0] = abs[1];
    }
    let n = abs.len();
    if n <= levels {
        return h.range;
    }
    let mut best = (f64::INFINITY, n);
    for i in (levels..=n).step_by(((n - levels) / 256).max(1)) {
        let mut p: Vec<f64> = abs[..i].to_vec();
        p[i - 1] += abs[i..].iter().sum::<f64>();
        // Quantise p into `levels` groups, then spread each group's mass over its non-empty bins.
        let mut q = vec![0.0f64; i];
        for j in 0..levels {
            let (start, end) = (j * i / levels, ((j + 1) * i / levels).max(j * i / levels + 1));
            let mass: f64 = abs[start..end.min(i)].iter().sum();
            let nonzero = abs[start..end.min(i)].iter().filter(|&&c| c > 0.0).count();
            if nonzero > 0 {
                for k in start..end.min(i) {
                    if abs[k] > 0.0 {
                        q[k] = mass / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        if ps == 0.0 || qs == 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for (&pk, &qk) in p.iter().zip(&q) {
            if pk > 0.0 {
                let (pn, qn) = (pk / ps, (qk / qs).max(1e-12));
                kl += pn * (pn / qn).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    bin_edge(h, best.1)
}

/// Threshold minimising E[(x − q(x))²] for a symmetric quantiser with `half_levels` steps per
/// side: clipping error from bins above t plus uniform rounding noise (step²/12) below it.
pub fn mse_threshold(h: &Histogram, half_levels: f64) -> f32 {
    let abs = h.abs_bins();
    let w = f64::from(h.width());
    let mut best = (f64::INFINITY, abs.len());
    for i in 1..=abs.len() {
        let t = i as f64 * w;
        let step = t / half_levels;
        let mut err = 0.0;
        for (k, &c) in abs.iter().enumerate() {
            let centre = (k as f64 + 0.5) * w;
            err += c as f64 * if centre > t { (centre - t).powi(2) } else { step * step / 12.0 };
        }
        if err < best.0 {
            best = (err, i);
        }
    }
    bin_edge(h, best.1)
}

/// Sum of `a` in f64, eight independent lanes.
fn sum_f64(a: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let chunks = a.chunks_exact(L);
    let rest: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for i in 0..L {
            acc[i] += f64::from(c[i]);
        }
    }
    acc.iter().sum::<f64>() + rest
}

/// Which axis of a value holds the channels whose means are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// Axis 1 (NCHW activations read by a Conv).
    Second,
    /// The last axis (features read by a Gemm/MatMul).
    Last,
}

/// Running per-channel sums of one value.
#[derive(Debug, Clone)]
struct ChannelSums {
    axis: ChannelAxis,
    sums: Vec<f64>,
    count: u64,
}

impl ChannelSums {
    fn add(&mut self, a: &[f32], shape: &[usize]) {
        let (outer, channels, inner) = match self.axis {
            ChannelAxis::Second if shape.len() >= 2 => (shape[0], shape[1], shape[2..].iter().product::<usize>()),
            ChannelAxis::Last if !shape.is_empty() => (shape[..shape.len() - 1].iter().product::<usize>(), shape[shape.len() - 1], 1),
            _ => return,
        };
        if self.sums.is_empty() {
            self.sums = vec![0.0; channels];
        }
        if self.sums.len() != channels {
            return;
        }
        if inner == 1 {
            for row in a.chunks_exact(channels) {
                self.sums.iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x));
            }
        } else {
            for (i, plane) in a.chunks_exact(inner).enumerate() {
                self.sums[i % channels] += sum_f64(plane);
            }
        }
        self.count += (outer * inner) as u64;
    }
}

/// Merged requests → statistics (and, where asked, per-channel means), updated batch by batch.
#[derive(Debug, Clone)]
pub struct Collector {
    stats: BTreeMap<String, ValueStats>,
    means: BTreeMap<String, ChannelSums>,
}

impl Collector {
    /// One entry per requested value; a histogram where any request on it needs one.
    pub fn new(requests: &[StatRequest], bins: usize) -> Self {
        let mut stats: BTreeMap<String, ValueStats> = BTreeMap::new();
        for r in requests {
            let s = stats.entry(r.value.clone()).or_insert(ValueStats { min: f32::INFINITY, max: f32::NEG_INFINITY, count: 0, histogram: None });
            if r.method.needs_histogram() && s.histogram.is_none() {
                s.histogram = Some(Histogram::new(bins));
            }
        }
        Self { stats, means: BTreeMap::new() }
    }

    /// Also tracks the mean of each channel of `value` (bias correction's `E[x]`), in the
    /// same pass.
    pub fn with_channel_means(mut self, value: &str, axis: ChannelAxis) -> Self {
        self.means.insert(value.to_owned(), ChannelSums { axis, sums: Vec::new(), count: 0 });
        self
    }

    /// The values to capture.
    pub fn values(&self) -> Vec<String> {
        let mut v: Vec<String> = self.stats.keys().chain(self.means.keys()).cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Adds one batch. Non-finite activations are an error naming the value.
    pub fn observe(&mut self, batch: &BTreeMap<String, TensorValue>) -> Result<()> {
        for (name, v) in batch {
            let (stats, means) = (self.stats.get_mut(name), self.means.get_mut(name));
            if stats.is_none() && means.is_none() {
                continue;
            }
            let TensorValue::F32(a) = v else {
                return Err(EngineError::Config(format!("cannot calibrate '{name}': it is {:?}, not float", v.data_type())));
            };
            let owned;
            let slice = match a.as_slice() {
                Some(s) => s,
                None => {
                    owned = a.iter().copied().collect::<Vec<f32>>();
                    &owned
                }
            };
            let (lo, hi, finite) = min_max(slice);
            if !finite {
                let bad = slice.iter().find(|x| !x.is_finite()).copied().unwrap_or(f32::NAN);
                return Err(EngineError::Config(format!(
                    "activation '{name}' holds {bad} on the calibration data; check the data for extreme or invalid values"
                )));
            }
            if let Some(s) = stats {
                s.min = s.min.min(lo);
                s.max = s.max.max(hi);
                s.count += slice.len() as u64;
                if let Some(h) = s.histogram.as_mut() {
                    h.add_bounded(slice, lo.abs().max(hi.abs()));
                }
            }
            if let Some(m) = means {
                m.add(slice, a.shape());
            }
        }
        Ok(())
    }

    /// The statistics gathered.
    pub fn finish(self) -> BTreeMap<String, ValueStats> {
        self.finish_with_means().0
    }

    /// The statistics and the per-channel means gathered.
    pub fn finish_with_means(self) -> (BTreeMap<String, ValueStats>, BTreeMap<String, Vec<f64>>) {
        let means = self.means.into_iter().filter(|(_, m)| m.count > 0).map(|(k, m)| (k, m.sums.iter().map(|s| s / m.count as f64).collect())).collect();
        (self.stats, means)
    }
}

/// One streaming pass over `indices` of `data` serving every request.
pub fn collect(
    model: &Model,
    data: &Dataset,
    indices: &[usize],
    requests: &[StatRequest],
    batch_size: usize,
    bins: usize,
    cfg: &SessionConfig,
) -> Result<BTreeMap<String, ValueStats>> {
    Ok(collect_with(model, data, indices, Collector::new(requests, bins), batch_size, cfg)?.0.finish())
}

/// Runs `collector` over `indices` of `data` in one streaming pass; padded token sequences
/// run at their true lengths (pad positions never enter the statistics). Also returns
/// whether padding was trimmed.
pub fn collect_with(
    model: &Model,
    data: &Dataset,
    indices: &[usize],
    mut collector: Collector,
    batch_size: usize,
    cfg: &SessionConfig,
) -> Result<(Collector, bool)> {
    let trimmed = capture(model, data, indices, &collector.values(), batch_size, cfg, true, |_, batch| collector.observe(batch))?;
    Ok((collector, trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    }

    #[test]
    fn histogram_widens_without_losing_counts() {
        let mut h = Histogram::new(64);
        h.add(&[0.5f32, -0.25]);
        h.add(&[3.0f32, -7.5, 0.1]);
        assert_eq!(h.total(), 5);
        assert!(h.range >= 7.5);
        // The widened histogram still places each value on its side of zero.
        let neg: u64 = h.bins[..32].iter().sum();
        assert_eq!(neg, 2);
    }

    #[test]
    fn two_sided_percentile_cuts_each_tail() {
        let mut h = Histogram::new(2048);
        // Uniform on [-1, 3): 2 % cut overall is 1 % per tail.
        let v: Vec<f32> = (0..400_000).map(|i| i as f32 / 100_000.0 - 1.0).collect();
        h.add(&v);
        let (lo, hi) = percentile_range(&h, 98.0);
        assert!((lo - (-0.96)).abs() < 0.01 && (hi - 2.96).abs() < 0.01, "{lo} {hi}");
        // Half the mass at exactly zero (after a ReLU): the lower end stays at 0.
        let mut relu: Vec<f32> = vec![0.0; 1000];
        relu.extend((0..1000).map(|i| i as f32 / 1000.0));
        let mut h = Histogram::new(256);
        h.add(&relu);
        let (lo, hi) = percentile_range(&h, 99.0);
        assert!(lo == 0.0 && hi > 0.98 && hi <= 1.0, "{lo} {hi}");
    }

    #[test]
    fn percentile_of_uniform_data() {
        let mut h = Histogram::new(2048);
        let v: Vec<f32> = (0..100_000).map(|i| (i as f32 / 50_000.0) - 1.0).collect();
        h.add(&v);
        let t = percentile_threshold(&h, 99.0);
        assert!((t - 0.99).abs() < 0.01, "{t}");
    }

    #[test]
    fn entropy_clips_outliers_but_keeps_the_bulk() {
        let mut v = gaussian(200_000, 1);
        v.extend([40.0f32, -35.0, 38.0]);
        let mut h = Histogram::new(2048);
        for chunk in v.chunks(10_000) {
            h.add(chunk);
        }
        let kl = entropy_threshold(&h, 128);
        assert!(kl > 2.5 && kl < 20.0, "KL threshold {kl} should sit between the bulk and the outliers");
    }

    #[test]
    fn entropy_is_not_fooled_by_the_zero_spike_after_relu6() {
        // Half exact zeros, the rest ReLU6 of a wide Gaussian: the bulk spans the whole [0, 6].
        let mut v: Vec<f32> = gaussian(100_000, 4).into_iter().map(|x| (x * 3.0).clamp(0.0, 6.0)).collect();
        v.extend(std::iter::repeat_n(0.0f32, 50_000));
        let mut h = Histogram::new(2048);
        h.add(&v);
        let t = entropy_threshold(&h, 256);
        assert!(t > 4.0, "threshold {t} clips most of a dense [0, 6] range");
    }

    #[test]
    fn mse_threshold_minimises_the_real_quantisation_error() {
        let mut v = gaussian(100_000, 2);
        v.extend(gaussian(2_000, 3).into_iter().map(|x| x * 6.0));
        let mut h = Histogram::new(2048);
        h.add(&v);
        let actual = |t: f32| -> f64 {
            let step = t / 127.5;
            v.iter().map(|&x| f64::from(x - (x.clamp(-t, t) / step).round() * step).powi(2)).sum()
        };
        let t = mse_threshold(&h, 127.5);
        let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for other in [amax, 0.5 * t, 1.5 * t, 2.0] {
            assert!(actual(t) <= actual(other) * 1.02, "t={t}: {} vs t={other}: {}", actual(t), actual(other));
        }
    }

    #[test]
    fn collector_merges_requests_and_rejects_nan() {
        let reqs = [StatRequest { value: "a".into(), method: Method::MinMax }, StatRequest { value: "a".into(), method: Method::Entropy }];
        let mut c = Collector::new(&reqs, 128);
        assert_eq!(c.values(), vec!["a".to_owned()]);
        let batch = |v: Vec<f32>| BTreeMap::from([("a".to_owned(), TensorValue::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v).unwrap()))]);
        c.observe(&batch(vec![1.0, -2.0])).unwrap();
        c.observe(&batch(vec![3.0])).unwrap();
        assert!(c.observe(&batch(vec![f32::NAN])).unwrap_err().to_string().contains("'a'"));
        let s = &c.finish()["a"];
        assert_eq!((s.min, s.max, s.count), (-2.0, 3.0, 3));
        assert_eq!(s.range(Method::MinMax).unwrap(), Range { min: -2.0, max: 3.0 });
        assert!(s.histogram.is_some());
    }

    #[test]
    fn recipe_settings_map_to_one_rule_each() {
        use tamp_domain::recipe::{Calibration, CalibrationMethod as M};
        let rule = |method| Method::from(&Calibration { method, percentile: 99.5, ..Calibration::default() });
        assert_eq!(rule(M::Minmax), Method::MinMax);
        assert_eq!(rule(M::Kl), Method::Entropy);
        assert_eq!(rule(M::Percentile), Method::Percentile { percentile: 99.5 });
        assert_eq!(rule(M::Mse), Method::Mse);
        assert_eq!(rule(M::Auto), Method::Auto);
        let stats = ValueStats { min: 1.0, max: 2.0, count: 2, histogram: None };
        assert!(stats.range(Method::Auto).unwrap_err().to_string().contains("candidates"));
        assert_eq!("entropy".parse::<M>(), Ok(M::Kl));
        assert_eq!("auto".parse::<M>(), Ok(M::Auto));
        assert!("magic".parse::<M>().unwrap_err().contains("minmax"));
    }

    #[test]
    fn channel_means_on_both_axes() {
        // [N=2, C=3, 2×2]: channel c holds c + n·10 everywhere.
        let a = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 3, 2, 2]), |ix| (ix[1] + ix[0] * 10) as f32);
        let b = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[4, 3]), |ix| (ix[1] * 2 + ix[0]) as f32);
        let batch = BTreeMap::from([("a".to_owned(), TensorValue::F32(a)), ("b".to_owned(), TensorValue::F32(b))]);
        let mut c = Collector::new(&[StatRequest { value: "a".into(), method: Method::MinMax }], 64)
            .with_channel_means("a", ChannelAxis::Second)
            .with_channel_means("b", ChannelAxis::Last);
        assert_eq!(c.values(), vec!["a".to_owned(), "b".to_owned()]);
        c.observe(&batch).unwrap();
        c.observe(&batch).unwrap();
        let (stats, means) = c.finish_with_means();
        assert_eq!(means["a"], vec![5.0, 6.0, 7.0]);
        assert_eq!(means["b"], vec![1.5, 3.5, 5.5]);
        assert_eq!((stats["a"].min, stats["a"].max), (0.0, 12.0));
        assert!(!stats.contains_key("b"), "means-only values get no range");
    }
}
