//! im2col and col2im as candle custom ops, so a convolution trains as one matmul with a cheap
//! backward: `im2col` lays each output position's receptive field out as a row (columns in
//! ONNX weight order `c·kh·kw + dy·kw + dx`, so `[M, C, kh, kw]` weights need no permute), and
//! its gradient is `col2im`, which adds each row back where it was read from. Writing the
//! same thing with candle's slicing ops made every kernel offset a padded full-size gradient
//! in the backward pass (7× slower); candle's own conv backward runs a naive transpose conv.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The geometry of one 2-D window op on `[N, C, H, W]` input.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// top, left (bottom/right padding only shows in `out`).
    pub pad: (usize, usize),
    pub out: (usize, usize),
}

impl Window {
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// For each (output row or column, kernel offset) the input index, or `usize::MAX` in
    /// padding: `table[o · k + j]`.
    fn table(&self, vertical: bool) -> Vec<usize> {
        let (s, d, p, limit, outs, ks) = if vertical {
            (self.stride.0, self.dilation.0, self.pad.0, self.h, self.out.0, self.kh)
        } else {
            (self.stride.1, self.dilation.1, self.pad.1, self.w, self.out.1, self.kw)
        };
        (0..outs).flat_map(|o| (0..ks).map(move |j| (o * s + j * d).checked_sub(p).filter(|&i| i < limit).unwrap_or(usize::MAX))).collect()
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: float32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: needs a contiguous input") };
    Ok(&v[a..b])
}

/// `[N, C, H, W]` → `[N·Ho·Wo, C·kh·kw]`.
pub struct Im2Col(pub Window);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = f32_slice(s, l, "im2col")?;
        let n = l.dims()[0];
        let (ho, wo) = g.out;
        let k = g.k();
        let mut out = vec![0f32; n * ho * wo * k];
        let (ys, xs) = (g.table(true), g.table(false));
        for (row, dst) in out.chunks_exact_mut(k).enumerate() {
            let (b, oy, ox) = (row / (ho * wo), (row / wo) % ho, row % wo);
            let (ty, tx) = (&ys[oy * g.kh..][..g.kh], &xs[ox * g.kw..][..g.kw]);
            for ci in 0..g.c {
                let plane = &x[(b * g.c + ci) * g.h * g.w..][..g.h * g.w];
                for (dy, &iy) in ty.iter().enumerate() {
                    if iy == usize::MAX {
                        continue;
                    }
                    let line = &plane[iy * g.w..][..g.w];
                    let d = &mut dst[(ci * g.kh + dy) * g.kw..][..g.kw];
                    for (o, &ix) in d.iter_mut().zip(tx) {
                        if ix != usize::MAX {
                            *o = line[ix];
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n * ho * wo, k))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = arg.dim(0)?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im { window: self.0, n })?))
    }
}

/// The adjoint of [`Im2Col`]: `[N·Ho·Wo, C·kh·kw]` → `[N, C, H, W]`, summing overlaps.
pub struct Col2Im {
    pub window: Window,
    pub n: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.window;
        let col = f32_slice(s, l, "col2im")?;
        let (ho, wo) = g.out;
        let k = g.k();
        let mut out = vec![0f32; self.n * g.c * g.h * g.w];
        let (ys, xs) = (g.table(true), g.table(false));
        for (row, src) in col.chunks_exact(k).enumerate() {
            let (b, oy, ox) = (row / (ho * wo), (row / wo) % ho, row % wo);
            let (ty, tx) = (&ys[oy * g.kh..][..g.kh], &xs[ox * g.kw..][..g.kw]);
            for ci in 0..g.c {
                let plane = &mut out[(b * g.c + ci) * g.h * g.w..][..g.h * g.w];
                for (dy, &iy) in ty.iter().enumerate() {
                    if iy == usize::MAX {
                        continue;
                    }
                    let line = &mut plane[iy * g.w..][..g.w];
                    let s = &src[(ci * g.kh + dy) * g.kw..][..g.kw];
                    for (&v, &ix) in s.iter().zip(tx) {
                        if ix != usize::MAX {
                            line[ix] += v;
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n, g.c, g.h, g.w))))
    }
}

/// The valid outputs `lo..hi` of one kernel offset along an axis: output `o` reads input
/// `o·s + off`, which must lie in `0..limit`.
fn span(outs: usize, s: usize, off: isize, limit: usize) -> (usize, usize) {
    let lo = if off < 0 { off.unsigned_abs().div_ceil(s) } else { 0 };
    let room = limit as isize - off;
    let hi = if room <= 0 { 0 } else { (room as usize).div_ceil(s).min(outs) };
    (lo.min(hi), hi)
}

impl Window {
    fn positions(&self) -> usize {
        self.out.0 * self.out.1
    }

    /// The offset along each axis of kernel tap `(dy, dx)`: input = output · stride + offset.
    fn offsets(&self, dy: usize, dx: usize) -> (isize, isize) {
        ((dy * self.dilation.0) as isize - self.pad.0 as isize, (dx * self.dilation.1) as isize - self.pad.1 as isize)
    }

    /// Stride 1 with outputs as wide as the input (ResNet's 3×3 "same" convolutions): each
    /// kernel tap is then one flat shift of the plane, `out[p] = in[p + off]`, copied or added
    /// in one run instead of one short run per output row (28, 14 or 7 values on
    /// Fashion-MNIST; the per-row calls were a fifth of a ResNet-8 step).
    fn flat(&self) -> bool {
        self.stride == (1, 1) && self.out.1 == self.w
    }

    /// For a flat window ([`Window::flat`]): tap `(dy, dx)`'s shift, its valid output rows
    /// and columns, and the run `plo..phi` of outputs whose shifted input lies in the plane.
    fn flat_tap(&self, dy: usize, dx: usize) -> Option<FlatTap> {
        let (ho, wo) = self.out;
        let (oy_off, ox_off) = self.offsets(dy, dx);
        let (ylo, yhi) = span(ho, 1, oy_off, self.h);
        let (xlo, xhi) = span(wo, 1, ox_off, self.w);
        if ylo == yhi || xlo == xhi {
            return None;
        }
        let off = oy_off * self.w as isize + ox_off;
        let plo = (ylo * wo).max(off.min(0).unsigned_abs());
        let phi = ((yhi * wo) as isize).min((self.h * self.w) as isize - off) as usize;
        Some(FlatTap { off, rows: (ylo, yhi), cols: (xlo, xhi), run: (plo, phi) })
    }

    /// Lays sample `x` (`[C, H, W]`) out as rows `c·kh·kw + dy·kw + dx` of `col`, `Ho·Wo`
    /// columns each starting at column `at` of rows `ld` long (several samples side by side).
    fn im2col(&self, x: &[f32], col: &mut [f32], ld: usize, at: usize) {
        let (ho, wo) = self.out;
        let (sy, sx) = self.stride;
        if self.flat() {
            for c in 0..self.c {
                let plane = &x[c * self.h * self.w..][..self.h * self.w];
                for dy in 0..self.kh {
                    for dx in 0..self.kw {
                        let row = &mut col[((c * self.kh + dy) * self.kw + dx) * ld + at..][..ho * wo];
                        let Some(t) = self.flat_tap(dy, dx) else {
                            row.fill(0.0);
                            continue;
                        };
                        let (plo, phi) = t.run;
                        row[..plo].fill(0.0);
                        row[phi..].fill(0.0);
                        row[plo..phi].copy_from_slice(&plane[plo.wrapping_add_signed(t.off)..][..phi - plo]);
                        t.clear_columns(row, wo);
                    }
                }
            }
            return;
        }
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..][..self.h * self.w];
            for dy in 0..self.kh {
                for dx in 0..self.kw {
                    let (oy_off, ox_off) = self.offsets(dy, dx);
                    let (ylo, yhi) = span(ho, sy, oy_off, self.h);
                    let (xlo, xhi) = span(wo, sx, ox_off, self.w);
                    let row = &mut col[((c * self.kh + dy) * self.kw + dx) * ld + at..][..ho * wo];
                    for oy in 0..ho {
                        let dst = &mut row[oy * wo..][..wo];
                        if oy < ylo || oy >= yhi || xlo == xhi {
                            dst.fill(0.0);
                            continue;
                        }
                        let line = &plane[(oy * sy).wrapping_add_signed(oy_off) * self.w..][..self.w];
                        let first = (xlo * sx).wrapping_add_signed(ox_off);
                        dst[..xlo].fill(0.0);
                        dst[xhi..].fill(0.0);
                        if sx == 1 {
                            dst[xlo..xhi].copy_from_slice(&line[first..first + xhi - xlo]);
                        } else {
                            for (o, v) in dst[xlo..xhi].iter_mut().zip(line[first..].iter().step_by(sx)) {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Window::im2col`]: adds the rows of `col` back into `dx` (`[C, H, W]`).
    /// `col`'s values at padding positions are overwritten with zeros (flat windows add each
    /// tap in one run, and a zero added changes nothing).
    fn col2im(&self, col: &mut [f32], ld: usize, at: usize, dx_out: &mut [f32]) {
        let (ho, wo) = self.out;
        let (sy, sx) = self.stride;
        if self.flat() {
            for c in 0..self.c {
                let plane = &mut dx_out[c * self.h * self.w..][..self.h * self.w];
                for dy in 0..self.kh {
                    for dx in 0..self.kw {
                        let Some(t) = self.flat_tap(dy, dx) else { continue };
                        let row = &mut col[((c * self.kh + dy) * self.kw + dx) * ld + at..][..ho * wo];
                        t.clear_columns(row, wo);
                        let (plo, phi) = t.run;
                        let dst = &mut plane[plo.wrapping_add_signed(t.off)..][..phi - plo];
                        for (o, v) in dst.iter_mut().zip(&row[plo..phi]) {
                            *o += *v;
                        }
                    }
                }
            }
            return;
        }
        for c in 0..self.c {
            let plane = &mut dx_out[c * self.h * self.w..][..self.h * self.w];
            for dy in 0..self.kh {
                for dx in 0..self.kw {
                    let (oy_off, ox_off) = self.offsets(dy, dx);
                    let (ylo, yhi) = span(ho, sy, oy_off, self.h);
                    let (xlo, xhi) = span(wo, sx, ox_off, self.w);
                    if xlo == xhi {
                        continue;
                    }
                    let row = &col[((c * self.kh + dy) * self.kw + dx) * ld + at..][..ho * wo];
                    let first = (xlo * sx).wrapping_add_signed(ox_off);
                    for oy in ylo..yhi {
                        let src = &row[oy * wo + xlo..oy * wo + xhi];
                        let line = &mut plane[(oy * sy).wrapping_add_signed(oy_off) * self.w..][..self.w];
                        if sx == 1 {
                            for (v, o) in src.iter().zip(&mut line[first..first + src.len()]) {
                                *o += *v;
                            }
                        } else {
                            for (v, o) in src.iter().zip(line[first..].iter_mut().step_by(sx)) {
                                *o += *v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Samples per GEMM: enough output positions side by side for an efficient product, and
    /// enough tasks to keep every thread busy.
    fn group(&self, n: usize) -> usize {
        let per_thread = n.div_ceil(2 * crate::blas::threads()).max(1);
        256usize.div_ceil(self.positions().max(1)).clamp(1, per_thread)
    }
}

/// One kernel tap of a flat window ([`Window::flat_tap`]).
struct FlatTap {
    /// Input index = output index + `off`.
    off: isize,
    /// Valid output rows and columns.
    rows: (usize, usize),
    cols: (usize, usize),
    /// Outputs whose shifted input index lies in the plane.
    run: (usize, usize),
}

impl FlatTap {
    /// Zeros the columns of the valid rows whose input falls in the padding (in the flat
    /// shift they read or write the neighbouring row's edge).
    fn clear_columns(&self, row: &mut [f32], wo: usize) {
        let (xlo, xhi) = self.cols;
        if xlo == 0 && xhi == wo {
            return;
        }
        for oy in self.rows.0..self.rows.1 {
            let line = &mut row[oy * wo..][..wo];
            line[..xlo].iter_mut().for_each(|v| *v = 0.0);
            line[xhi..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// Receptive fields kept from the forward pass for the backward up to this many values per
/// convolution (64 MB); larger ones are laid out again in the backward pass.
const KEEP_COLUMNS: usize = 16 << 20;

thread_local! {
    /// Per-thread scratch for the products, reused across calls (no allocation or zeroing
    /// per call).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Receptive-field buffers handed back by backward passes, reused by the next forward pass of
/// the same size: every value is written before it is read, so a recycled buffer needs no
/// zeroing (zeroing them was a tenth of a ResNet-8 step). At most [`KEEP_COLUMNS`] values.
static SPARE: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

fn columns(len: usize) -> Vec<f32> {
    let mut spare = lock(&SPARE);
    match spare.iter().position(|b| b.len() == len) {
        Some(i) => spare.swap_remove(i),
        None => vec![0f32; len],
    }
}

fn recycle(buf: Vec<f32>) {
    let mut spare = lock(&SPARE);
    let held: usize = spare.iter().map(Vec::len).sum();
    if held + buf.len() <= KEEP_COLUMNS {
        spare.push(buf);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A one-group 2-D convolution `[N, C, H, W] ⊛ [M, C, kh, kw] → [N, M, Ho, Wo]` as one candle
/// op with its analytic backward ([`ConvBackward`]). Per group of samples, the receptive fields
/// are laid out as `[C·kh·kw, samples·Ho·Wo]` and multiplied by the weight as it is stored, so
/// the output comes out in NCHW; groups run on candle's pool with single-threaded GEMMs, and
/// the layout is kept for the backward pass (up to [`KEEP_COLUMNS`]). The im2col + matmul form
/// it replaces kept a `[N·Ho·Wo, C·kh·kw]` tensor in the autograd graph, with its zero-filled
/// gradient, its col2im, and a permute of every output: about half of a ResNet-8 step.
pub struct Conv2d {
    pub window: Window,
    pub cout: usize,
    /// The forward pass's receptive fields, group after group, for the backward pass.
    kept: std::sync::Mutex<Option<Vec<f32>>>,
    train: bool,
}

impl Conv2d {
    /// `train`: whether a backward pass will follow (the receptive fields are kept for it).
    pub fn new(window: Window, cout: usize, train: bool) -> Self {
        Self { window, cout, train, kept: std::sync::Mutex::new(None) }
    }
}

impl candle_core::CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.window;
        let (x, w) = (f32_slice(s1, l1, "conv")?, f32_slice(s2, l2, "conv")?);
        let n = l1.dims()[0];
        let (k, p, m, plane) = (g.k(), g.positions(), self.cout, g.c * g.h * g.w);
        let per = g.group(n);
        let mut y = vec![0f32; n * m * p];
        let mut cols = if self.train && k * n * p <= KEEP_COLUMNS { columns(k * n * p) } else { Vec::new() };
        let keep: Vec<std::sync::Mutex<&mut [f32]>> = cols.chunks_mut((k * per * p).max(1)).map(std::sync::Mutex::new).collect();
        let slots: Vec<std::sync::Mutex<&mut [f32]>> = y.chunks_mut(per * m * p).map(std::sync::Mutex::new).collect();
        crate::blas::parallel(
            slots.len(),
            || (),
            |(), t| {
                let mut out = lock(&slots[t]);
                let count = out.len() / (m * p);
                let ld = count * p;
                let mut kept = keep.get(t).map(lock);
                let own = if kept.is_some() { 0 } else { k * ld };
                with_scratch(own + m * ld, |scratch| {
                    let (mine, prod) = scratch.split_at_mut(own);
                    let col: &mut [f32] = match kept.as_deref_mut() {
                        Some(c) => c,
                        None => mine,
                    };
                    for s in 0..count {
                        g.im2col(&x[(t * per + s) * plane..][..plane], col, ld, s * p);
                    }
                    if count == 1 {
                        crate::blas::sgemm(false, false, (m, p, k), 1.0, w, k, col, ld, 0.0, &mut out, p);
                        return;
                    }
                    crate::blas::sgemm(false, false, (m, ld, k), 1.0, w, k, col, ld, 0.0, prod, ld);
                    for s in 0..count {
                        for co in 0..m {
                            out[(s * m + co) * p..][..p].copy_from_slice(&prod[co * ld + s * p..][..p]);
                        }
                    }
                });
            },
        );
        drop((slots, keep));
        *lock(&self.kept) = (!cols.is_empty()).then_some(cols);
        Ok((CpuStorage::F32(y), Shape::from((n, m, g.out.0, g.out.1))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let kept = lock(&self.kept).take();
        let both = x.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &ConvBackward { window: self.window, cout: self.cout, kept: std::sync::Mutex::new(kept) },
        )?;
        let nx = x.elem_count();
        Ok((Some(both.narrow(0, 0, nx)?.reshape(x.shape())?), Some(both.narrow(0, nx, w.elem_count())?.reshape(w.shape())?)))
    }
}

/// The gradients of [`Conv2d`] in one pass over the samples, `dx` then `dw` flattened into
/// one vector (they share the gathered output gradient): per group of samples,
/// `dcol = Wᵀ·dY` added back by col2im, and `dW += dY·colᵀ` (each group its own share,
/// summed in order).
struct ConvBackward {
    window: Window,
    cout: usize,
    /// The forward pass's receptive fields, when it kept them (recycled after use).
    kept: std::sync::Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "conv2d-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.window;
        let (x, w, dy) = (f32_slice(s1, l1, "conv backward")?, f32_slice(s2, l2, "conv backward")?, f32_slice(s3, l3, "conv backward")?);
        let n = l1.dims()[0];
        let (k, p, m, plane) = (g.k(), g.positions(), self.cout, g.c * g.h * g.w);
        let per = g.group(n);
        let held = lock(&self.kept).take();
        let kept = held.as_deref().filter(|c| c.len() == k * n * p);
        let mut out = vec![0f32; n * plane + m * k];
        let (dx, dw) = out.split_at_mut(n * plane);
        let slots: Vec<std::sync::Mutex<&mut [f32]>> = dx.chunks_mut(per * plane).map(std::sync::Mutex::new).collect();
        // Each task's share of dW, summed in task order below: the same bytes every run.
        let parts: Vec<std::sync::Mutex<Vec<f32>>> = (0..slots.len()).map(|_| std::sync::Mutex::new(Vec::new())).collect();
        crate::blas::parallel(
            slots.len(),
            || (),
            |(), t| {
                let mut dx_part = lock(&slots[t]);
                let count = dx_part.len() / plane;
                let ld = count * p;
                let first = t * per;
                let own = if kept.is_some() { 0 } else { k * ld };
                with_scratch(own + k * ld + m * ld, |scratch| {
                    let (mine, rest) = scratch.split_at_mut(own);
                    let (dcol, dyg) = rest.split_at_mut(k * ld);
                    let col: &[f32] = match kept {
                        Some(c) => &c[first * k * p..][..k * ld],
                        None => {
                            for s in 0..count {
                                g.im2col(&x[(first + s) * plane..][..plane], mine, ld, s * p);
                            }
                            mine
                        }
                    };
                    let dys: &[f32] = if count == 1 {
                        &dy[first * m * p..][..m * p]
                    } else {
                        for s in 0..count {
                            for co in 0..m {
                                dyg[co * ld + s * p..][..p].copy_from_slice(&dy[((first + s) * m + co) * p..][..p]);
                            }
                        }
                        dyg
                    };
                    let mut dw_part = vec![0f32; m * k];
                    crate::blas::sgemm(false, true, (m, k, ld), 1.0, dys, ld, col, ld, 0.0, &mut dw_part, k);
                    *lock(&parts[t]) = dw_part;
                    crate::blas::sgemm(true, false, (k, ld, m), 1.0, w, k, dys, ld, 0.0, dcol, ld);
                    for s in 0..count {
                        g.col2im(dcol, ld, s * p, &mut dx_part[s * plane..][..plane]);
                    }
                });
            },
        );
        drop(slots);
        if let Some(c) = held {
            recycle(c);
        }
        for part in parts {
            let part = part.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (a, b) in dw.iter_mut().zip(&part) {
                *a += b;
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use candle_core::{Device, Tensor, Var};

    use super::*;

    fn seeded(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        // A small LCG: reproducible values in [-1, 1).
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let m = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        d / m
    }

    /// The fused op against the im2col + matmul form (candle's own matmul and autograd), in
    /// output and both gradients, over strides, dilations, asymmetric padding and batches that
    /// split into several sample groups; twice each, so the second forward pass runs on
    /// recycled buffers.
    #[test]
    fn the_fused_convolution_matches_the_im2col_form_with_gradients() {
        // (n, c, h, w, m, kh, kw, stride, dilation, pad top/left, out)
        let cases = [
            (9, 3, 7, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), (7, 6)),
            (5, 2, 9, 8, 3, 3, 2, (2, 1), (1, 1), (1, 0), (5, 7)),
            (4, 2, 8, 8, 5, 3, 3, (1, 2), (2, 1), (0, 1), (4, 4)),
            (33, 4, 4, 4, 6, 1, 1, (2, 2), (1, 1), (0, 0), (2, 2)),
            (3, 1, 28, 28, 4, 3, 3, (2, 2), (1, 1), (1, 1), (14, 14)),
            // Flat windows (stride 1, output as wide as the input): dilated, and shorter.
            (3, 2, 6, 7, 3, 3, 3, (1, 1), (2, 2), (2, 2), (6, 7)),
            (4, 2, 5, 6, 3, 2, 3, (1, 1), (1, 1), (0, 1), (4, 6)),
        ];
        for (i, &(n, c, h, w, m, kh, kw, stride, dilation, pad, out)) in cases.iter().enumerate() {
            let win = Window { c, h, w, kh, kw, stride, dilation, pad, out };
            for round in 0..2 {
                let (x, wt) = (seeded(&[n, c, h, w], i as u64), seeded(&[m, c, kh, kw], 100 + i as u64));
                let r = seeded(&[n, m, out.0, out.1], 200 + i as u64);
                let ours = x.as_tensor().apply_op2(wt.as_tensor(), Conv2d::new(win, m, true)).unwrap();
                let col = x.as_tensor().apply_op1(Im2Col(win)).unwrap();
                let theirs = col.matmul(&wt.as_tensor().reshape((m, c * kh * kw)).unwrap().t().unwrap()).unwrap();
                let theirs = theirs.reshape((n, out.0, out.1, m)).unwrap().permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
                assert!(max_rel(&ours, &theirs) < 1e-5, "case {i} round {round}: outputs differ by {}", max_rel(&ours, &theirs));
                let g1 = (&ours * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&theirs * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, v) in [("dx", &x), ("dw", &wt)] {
                    let d = max_rel(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                    assert!(d < 1e-5, "case {i} round {round}: {name} differs by {d}");
                }
            }
        }
    }
}
