//! The reference CNN: a ResNet-8-style network for 28×28 grey images (stem, three basic
//! residual blocks with widths w, 2w, 4w, global average pool, linear head), its candle
//! training form and its ONNX export (Conv + BatchNormalization + Relu + Add, as a real
//! exporter in training-free "eval" mode writes them, BN left unfolded for Tamp's passes).

use anyhow::Result;
use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder, batch_norm, linear};
use ndarray::{ArrayD, IxDyn};
use tamp_onnx::Model;
use tamp_onnx::builder::{Attr, GraphBuilder};

/// Conv (no bias, "same" padding) followed by batch norm. The convolution is written as
/// shifted slices + one matmul (im2col) because candle's CPU `conv_transpose2d`, which its
/// conv backward uses, is a naive loop and made training ~10x slower.
pub struct ConvBn {
    /// (cout, k·k·cin), column index (dy·k + dx)·cin + c.
    weight: Tensor,
    bn: BatchNorm,
    stride: usize,
    kernel: usize,
    cin: usize,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, kernel: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.pp("conv").get_with_hints((cout, kernel * kernel * cin), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        Ok(Self { weight, bn: batch_norm(cout, 1e-5, vb.pp("bn"))?, stride, kernel, cin })
    }

    fn conv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (k, s, p) = (self.kernel, self.stride, self.kernel / 2);
        let xp = if p > 0 { x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)? } else { x.clone() };
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let rows = Tensor::arange_step(0u32, (ho * s) as u32, s as u32, x.device())?;
        let cols = Tensor::arange_step(0u32, (wo * s) as u32, s as u32, x.device())?;
        let mut shifted = Vec::with_capacity(k * k);
        for dy in 0..k {
            for dx in 0..k {
                let t = xp.narrow(2, dy, (ho - 1) * s + 1)?.narrow(3, dx, (wo - 1) * s + 1)?;
                let t = if s > 1 { t.contiguous()?.index_select(&rows, 2)?.contiguous()?.index_select(&cols, 3)? } else { t };
                shifted.push(t);
            }
        }
        let col = Tensor::cat(&shifted, 1)?.permute((0, 2, 3, 1))?.reshape((n * ho * wo, k * k * c))?;
        let cout = self.weight.dim(0)?;
        col.matmul(&self.weight.t()?)?.reshape((n, ho, wo, cout))?.permute((0, 3, 1, 2))
    }

    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.bn.forward_t(&self.conv(x)?, train)
    }

    fn export(&self, b: &mut GraphBuilder, x: &str, name: &str) -> Result<String> {
        let (cout, k) = (self.weight.dim(0)?, self.kernel);
        let onnx_w = self.weight.reshape((cout, k, k, self.cin))?.permute((0, 3, 1, 2))?.contiguous()?;
        let w = b.init_f32(&format!("{name}.weight"), to_nd(&onnx_w)?);
        let p = (self.kernel / 2) as i64;
        let s = self.stride as i64;
        let k = self.kernel as i64;
        let y =
            b.op("Conv", &[x, &w], &[("kernel_shape", Attr::Ints(vec![k, k])), ("pads", Attr::Ints(vec![p, p, p, p])), ("strides", Attr::Ints(vec![s, s]))]);
        let (gamma, beta) = self.bn.weight_and_bias().ok_or_else(|| anyhow::anyhow!("batch norm without affine parameters"))?;
        let g = b.init_f32(&format!("{name}.bn.scale"), to_nd(gamma)?);
        let bb = b.init_f32(&format!("{name}.bn.bias"), to_nd(beta)?);
        let m = b.init_f32(&format!("{name}.bn.mean"), to_nd(self.bn.running_mean())?);
        let v = b.init_f32(&format!("{name}.bn.var"), to_nd(self.bn.running_var())?);
        Ok(b.op("BatchNormalization", &[&y, &g, &bb, &m, &v], &[("epsilon", Attr::Float(self.bn.eps() as f32))]))
    }
}

fn to_nd(t: &Tensor) -> Result<ArrayD<f32>> {
    let shape = t.dims().to_vec();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), data)?)
}

/// A basic residual block: conv-bn-relu, conv-bn, plus identity or 1×1 projection, relu.
pub struct Block {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<ConvBn>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout { Some(ConvBn::new(cin, cout, 1, stride, vb.pp("shortcut"))?) } else { None };
        Ok(Self { a: ConvBn::new(cin, cout, 3, stride, vb.pp("a"))?, b: ConvBn::new(cout, cout, 3, 1, vb.pp("b"))?, shortcut })
    }
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.b.forward(&self.a.forward(x, train)?.relu()?, train)?;
        let s = match &self.shortcut {
            Some(sc) => sc.forward(x, train)?,
            None => x.clone(),
        };
        (y + s)?.relu()
    }
    fn export(&self, g: &mut GraphBuilder, x: &str, name: &str) -> Result<String> {
        let a = self.a.export(g, x, &format!("{name}.a"))?;
        let a = g.op("Relu", &[&a], &[]);
        let y = self.b.export(g, &a, &format!("{name}.b"))?;
        let s = match &self.shortcut {
            Some(sc) => sc.export(g, x, &format!("{name}.shortcut"))?,
            None => x.to_owned(),
        };
        let sum = g.op("Add", &[&y, &s], &[]);
        Ok(g.op("Relu", &[&sum], &[]))
    }
}

/// The whole network.
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: Linear,
}

impl ResNet {
    /// Widths `w, 2w, 4w`; 10 classes.
    pub fn new(width: usize, classes: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let stem = ConvBn::new(1, width, 3, 2, vb.pp("stem"))?;
        let blocks = vec![
            Block::new(width, width, 1, vb.pp("block1"))?,
            Block::new(width, 2 * width, 2, vb.pp("block2"))?,
            Block::new(2 * width, 4 * width, 2, vb.pp("block3"))?,
        ];
        let head = linear(4 * width, classes, vb.pp("head"))?;
        Ok(Self { stem, blocks, head })
    }

    /// Logits for N×1×28×28 input.
    pub fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut y = self.stem.forward(x, train)?.relu()?;
        for b in &self.blocks {
            y = b.forward(&y, train)?;
        }
        self.head.forward(&y.mean((2, 3))?)
    }

    /// The ONNX model: input `input` [batch,1,28,28] float, output `logits` [batch,classes].
    pub fn export(&self, opset: i64) -> Result<Model> {
        let mut g = GraphBuilder::new("fmnist_resnet8", opset);
        let x = g.input_f32("input", &[None, Some(1), Some(28), Some(28)]);
        let y = self.stem.export(&mut g, &x, "stem")?;
        let mut y = g.op("Relu", &[&y], &[]);
        for (i, b) in self.blocks.iter().enumerate() {
            y = b.export(&mut g, &y, &format!("block{}", i + 1))?;
        }
        let pooled = g.op("GlobalAveragePool", &[&y], &[]);
        let flat = g.op("Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
        let w = g.init_f32("head.weight", to_nd(self.head.weight())?);
        let bias = self.head.bias().ok_or_else(|| anyhow::anyhow!("head without bias"))?;
        let bb = g.init_f32("head.bias", to_nd(bias)?);
        let classes = self.head.weight().dims()[0] as i64;
        g.op_n("Gemm", &[&flat, &w, &bb], &["logits"], &[("transB", Attr::Int(1))]);
        g.output_f32("logits", &[None, Some(classes)]);
        Ok(g.build())
    }
}
