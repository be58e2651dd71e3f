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
