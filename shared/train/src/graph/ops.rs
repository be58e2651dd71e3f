//! The op mappings: one arm per ONNX op in [`TrainGraph::run_node`], the window ops (Conv,
//! pooling, BatchNormalization) and the helpers they share.

use candle_core::{DType, Shape, Tensor};
use tamp_onnx::graph::{attr, attr_float, attr_int, attr_ints, node_label};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::proto::tensor_proto::DataType;

use super::{GraphError, Mode, Result, SUPPORTED, TrainGraph, ints, node_err, op, proto_to_candle, scalar_f};
use crate::conv::{Conv2d, Im2Col, Window};

impl TrainGraph {
    pub(super) fn run_node(&mut self, n: &NodeProto, ins: &[Option<Tensor>], mode: Mode) -> Result<Vec<Tensor>> {
        let inp = |i: usize| -> Result<&Tensor> { ins.get(i).and_then(Option::as_ref).ok_or_else(|| node_err(n, format!("input {i} is missing"))) };
        let f = |name: &str, d: f32| attr_float(n, name, d);
        let i = |name: &str, d: i64| attr_int(n, name, d);
        let one = |t: Tensor| Ok(vec![t]);
        match op(n) {
            "Identity" | "Dropout" => one(inp(0)?.clone()),
            "Add" => one(inp(0)?.broadcast_add(inp(1)?)?),
            "Sub" => one(inp(0)?.broadcast_sub(inp(1)?)?),
            "Mul" => one(inp(0)?.broadcast_mul(inp(1)?)?),
            "Div" => {
                let (a, b) = (inp(0)?, inp(1)?);
                if a.dtype() == DType::I64 {
                    // Integer division (shape arithmetic) truncates.
                    let (x, y) = (ints(a)?, ints(b)?);
                    let out: Vec<i64> = if y.len() == 1 { x.iter().map(|v| v / y[0]).collect() } else { x.iter().zip(&y).map(|(v, w)| v / w).collect() };
                    return one(Tensor::from_vec(out, a.shape(), a.device())?);
                }
                one(a.broadcast_div(b)?)
            }
            "Pow" => {
                let e = scalar_f(inp(1)?)?;
                let x = inp(0)?;
                one(if e == 2.0 {
                    x.sqr()?
                } else if e == 1.0 {
                    x.clone()
                } else {
                    x.powf(e)?
                })
            }
            "Max" => one(ins.iter().flatten().skip(1).try_fold(inp(0)?.clone(), |a, b| a.broadcast_maximum(b))?),
            "Min" => one(ins.iter().flatten().skip(1).try_fold(inp(0)?.clone(), |a, b| a.broadcast_minimum(b))?),
            "Sqrt" => one(inp(0)?.sqrt()?),
            "Exp" => one(inp(0)?.exp()?),
            "Log" => one(inp(0)?.log()?),
            "Neg" => one(inp(0)?.neg()?),
            "Abs" => one(inp(0)?.abs()?),
            "Reciprocal" => one(inp(0)?.recip()?),
            "Tanh" => one(inp(0)?.tanh()?),
            "Erf" => one(inp(0)?.erf()?),
            "Relu" => {
                let x = inp(0)?;
                one(if x.device().is_cpu() && x.dtype() == DType::F32 { x.contiguous()?.apply_op1(crate::bn::Relu)? } else { x.relu()? })
            }
            "Sigmoid" => one(candle_nn::ops::sigmoid(inp(0)?)?),
            "LeakyRelu" => {
                let x = inp(0)?;
                let a = f64::from(f("alpha", 0.01));
                one((x.relu()? - x.neg()?.relu()?.affine(a, 0.0)?)?)
            }
            "HardSigmoid" => one(inp(0)?.affine(f64::from(f("alpha", 0.2)), f64::from(f("beta", 0.5)))?.clamp(0f32, 1f32)?),
            "HardSwish" => {
                let x = inp(0)?;
                one(x.mul(&x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?)
            }
            "Gelu" => {
                let x = inp(0)?;
                one(if n.attribute.iter().any(|a| a.name.as_deref() == Some("approximate") && a.s.as_deref() == Some(b"tanh".as_slice())) {
                    x.gelu()?
                } else {
                    x.gelu_erf()?
                })
            }
            "Clip" => {
                let x = inp(0)?;
                let (lo, hi) = if ins.len() > 1 || n.attribute.iter().all(|a| a.name.as_deref() != Some("min")) {
                    let lo = ins.get(1).and_then(Option::as_ref).map(scalar_f).transpose()?.unwrap_or(f64::from(f32::MIN));
                    let hi = ins.get(2).and_then(Option::as_ref).map(scalar_f).transpose()?.unwrap_or(f64::from(f32::MAX));
                    (lo, hi)
                } else {
                    (f64::from(f("min", f32::MIN)), f64::from(f("max", f32::MAX)))
                };
                one(x.clamp(lo as f32, hi as f32)?)
            }
            "Softmax" => {
                let x = inp(0)?;
                let axis = norm_axis(i("axis", -1), x.rank());
                let m = x.max_keepdim(axis)?.detach();
                let e = x.broadcast_sub(&m)?.exp()?;
                one(e.broadcast_div(&e.sum_keepdim(axis)?)?)
            }
            "MatMul" => one(matmul(inp(0)?, inp(1)?)?),
            "Gemm" => {
                let mut a = inp(0)?.clone();
                let mut b = inp(1)?.clone();
                if i("transA", 0) != 0 {
                    a = a.t()?;
                }
                if i("transB", 0) != 0 {
                    b = b.t()?;
                }
                let mut y = crate::blas::matmul(&a, &b)?;
                let alpha = f64::from(f("alpha", 1.0));
                if alpha != 1.0 {
                    y = y.affine(alpha, 0.0)?;
                }
                if let Some(c) = ins.get(2).and_then(Option::as_ref) {
                    let beta = f64::from(f("beta", 1.0));
                    let c = if beta == 1.0 { c.clone() } else { c.affine(beta, 0.0)? };
                    y = y.broadcast_add(&c)?;
                }
                one(y)
            }
            "MatMulNBits" => {
                // The weight arrives fake-quantized as [N, blocks, block]: its first K columns
                // of each row are Wᵀ.
                let w = inp(1)?;
                let (cols, k) = (w.dim(0)?, i("K", 0) as usize);
                let wt = w.reshape((cols, ()))?.narrow(1, 0, k)?;
                let mut y = matmul(inp(0)?, &wt.t()?)?;
                if let Some(b) = ins.get(5).and_then(Option::as_ref) {
                    y = y.broadcast_add(b)?;
                }
                one(y)
            }
            "Conv" => one(self.conv(n, inp(0)?, inp(1)?, ins.get(2).and_then(Option::as_ref))?),
            "BatchNormalization" => one(self.batch_norm(n, ins, mode)?),
            "LayerNormalization" => {
                let x = inp(0)?;
                let axis = norm_axis(i("axis", -1), x.rank());
                let dims: Vec<usize> = (axis..x.rank()).collect();
                let eps = f64::from(f("epsilon", 1e-5));
                let mean = x.mean_keepdim(dims.as_slice())?;
                let c = x.broadcast_sub(&mean)?;
                let var = c.sqr()?.mean_keepdim(dims.as_slice())?;
                let mut y = c.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(inp(1)?)?;
                if let Some(b) = ins.get(2).and_then(Option::as_ref) {
                    y = y.broadcast_add(b)?;
                }
                one(y)
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceL2" => {
                let x = inp(0)?;
                let axes: Vec<i64> = match ins.get(1).and_then(Option::as_ref) {
                    Some(a) => ints(a)?,
                    None => attr_ints(n, "axes").to_vec(),
                };
                let mut dims: Vec<usize> = if axes.is_empty() { (0..x.rank()).collect() } else { axes.iter().map(|&a| norm_axis(a, x.rank())).collect() };
                dims.sort_unstable();
                let y = match op(n) {
                    "ReduceMean" => x.mean_keepdim(dims.as_slice())?,
                    "ReduceSum" => x.sum_keepdim(dims.as_slice())?,
                    "ReduceL2" => x.sqr()?.sum_keepdim(dims.as_slice())?.sqrt()?,
                    _ => dims.iter().try_fold(x.clone(), |a, &d| a.max_keepdim(d))?,
                };
                one(if i("keepdims", 1) == 0 { dims.iter().rev().try_fold(y, |a, &d| a.squeeze(d))? } else { y })
            }
            "GlobalAveragePool" => one(inp(0)?.mean_keepdim((2, 3))?),
            "GlobalMaxPool" => one(inp(0)?.max_keepdim(2)?.max_keepdim(3)?),
            "AveragePool" | "MaxPool" => one(self.pool(n, inp(0)?)?),
            "Flatten" => {
                let x = inp(0)?;
                let axis = norm_axis(i("axis", 1), x.rank() + 1);
                let a: usize = x.dims()[..axis].iter().product();
                one(x.reshape((a, x.elem_count() / a.max(1)))?)
            }
            "Reshape" => {
                let x = inp(0)?;
                let spec = ints(inp(1)?)?;
                let allow_zero = i("allowzero", 0) != 0;
                let mut dims: Vec<usize> = Vec::with_capacity(spec.len());
                let mut infer = None;
                for (k, &s) in spec.iter().enumerate() {
                    match s {
                        -1 => {
                            infer = Some(k);
                            dims.push(1);
                        }
                        0 if !allow_zero => dims.push(*x.dims().get(k).ok_or_else(|| node_err(n, "0 in the shape copies a dimension the input lacks"))?),
                        s => dims.push(s as usize),
                    }
                }
                if let Some(k) = infer {
                    let known: usize = dims.iter().product();
                    dims[k] = x.elem_count() / known.max(1);
                }
                one(x.reshape(dims)?)
            }
            "Transpose" => {
                let x = inp(0)?;
                let perm: Vec<usize> = match attr_ints(n, "perm") {
                    [] => (0..x.rank()).rev().collect(),
                    p => p.iter().map(|&a| a as usize).collect(),
                };
                one(x.permute(perm)?)
            }
            "Concat" => {
                let parts: Vec<&Tensor> = ins.iter().flatten().collect();
                let axis = norm_axis(i("axis", 0), parts[0].rank());
                one(Tensor::cat(&parts, axis)?)
            }
            "Unsqueeze" => {
                let x = inp(0)?;
                let axes = match ins.get(1).and_then(Option::as_ref) {
                    Some(a) => ints(a)?,
                    None => attr_ints(n, "axes").to_vec(),
                };
                let out_rank = x.rank() + axes.len();
                let mut axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, out_rank)).collect();
                axes.sort_unstable();
                one(axes.iter().try_fold(x.clone(), |a, &d| a.unsqueeze(d))?)
            }
            "Squeeze" => {
                let x = inp(0)?;
                let axes = match ins.get(1).and_then(Option::as_ref) {
                    Some(a) => ints(a)?,
                    None => attr_ints(n, "axes").to_vec(),
                };
                let mut axes: Vec<usize> = if axes.is_empty() {
                    x.dims().iter().enumerate().filter(|(_, d)| **d == 1).map(|(k, _)| k).collect()
                } else {
                    axes.iter().map(|&a| norm_axis(a, x.rank())).collect()
                };
                axes.sort_unstable();
                one(axes.iter().rev().try_fold(x.clone(), |a, &d| a.squeeze(d))?)
            }
            "Shape" => {
                let x = inp(0)?;
                let r = x.rank() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clampi(i("start", 0)), clampi(i("end", r)));
                let dims: Vec<i64> = x.dims()[s..e.max(s)].iter().map(|&d| d as i64).collect();
                let len = dims.len();
                // A shape lives on the host (read there without waiting for a GPU).
                one(Tensor::from_vec(dims, len, &candle_core::Device::Cpu)?)
            }
            "Range" => {
                let (s, l, d) = (ints(inp(0)?)?[0], ints(inp(1)?)?[0], ints(inp(2)?)?[0]);
                let mut v = Vec::new();
                let mut x = s;
                while (d > 0 && x < l) || (d < 0 && x > l) {
                    v.push(x);
                    x += d;
                }
                let len = v.len();
                let t = Tensor::from_vec(v, len, &candle_core::Device::Cpu)?;
                one(if inp(0)?.dtype() == DType::F32 { t.to_dtype(DType::F32)? } else { t })
            }
            "Cast" => {
                let to = match DataType::try_from(i("to", 1) as i32).unwrap_or(DataType::Undefined) {
                    DataType::Float | DataType::Double | DataType::Float16 => DType::F32,
                    DataType::Bool => {
                        let x = inp(0)?;
                        return one(x.ne(&x.zeros_like()?)?);
                    }
                    DataType::Int64 | DataType::Int32 | DataType::Int8 | DataType::Uint8 | DataType::Int16 => DType::I64,
                    other => return Err(node_err(n, format!("Cast to {other:?} is not supported for training"))),
                };
                one(inp(0)?.to_dtype(to)?)
            }
            "Equal" => one(inp(0)?.broadcast_eq(inp(1)?)?),
            "Less" => one(inp(0)?.broadcast_lt(inp(1)?)?),
            "Greater" => one(inp(0)?.broadcast_gt(inp(1)?)?),
            "Not" => {
                let x = inp(0)?;
                one(x.eq(&x.zeros_like()?)?)
            }
            "Where" => {
                let (c, a, b) = (inp(0)?, inp(1)?, inp(2)?);
                let s = broadcast_shape(&[c.shape(), a.shape(), b.shape()])?;
                one(c.broadcast_as(s.clone())?.contiguous()?.where_cond(&a.broadcast_as(s.clone())?.contiguous()?, &b.broadcast_as(s)?.contiguous()?)?)
            }
            "Expand" => {
                let x = inp(0)?;
                let want: Vec<usize> = ints(inp(1)?)?.iter().map(|&d| d as usize).collect();
                let s = broadcast_shape(&[x.shape(), &Shape::from(want)])?;
                one(x.broadcast_as(s)?.contiguous()?)
            }
            "ConstantOfShape" => {
                let dims: Vec<usize> = ints(inp(0)?)?.iter().map(|&d| d as usize).collect();
                let v = match attr(n, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => proto_to_candle(t, &candle_core::Device::Cpu)?,
                    None => Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu)?,
                };
                one(super::home(&v.flatten_all()?.reshape(())?.broadcast_as(dims)?.contiguous()?, &self.device)?)
            }
            "Gather" => {
                let (x, idx) = (inp(0)?, inp(1)?);
                let axis = norm_axis(i("axis", 0), x.rank());
                let dim = x.dims()[axis] as i64;
                let raw = ints(idx)?;
                let fixed: Vec<i64> = raw.iter().map(|&v| if v < 0 { v + dim } else { v }).collect();
                if let Some(bad) = fixed.iter().find(|&&v| v < 0 || v >= dim) {
                    return Err(node_err(n, format!("index {bad} is outside an axis of {dim}")));
                }
                let ids = Tensor::from_vec(fixed.iter().map(|&v| v as u32).collect::<Vec<u32>>(), fixed.len(), x.device())?;
                let picked = x.contiguous()?.index_select(&ids, axis)?;
                let mut dims = x.dims()[..axis].to_vec();
                dims.extend_from_slice(idx.dims());
                dims.extend_from_slice(&x.dims()[axis + 1..]);
                one(picked.reshape(dims)?)
            }
            // Constant zero padding (Tamp's int8 Convs of one to three input channels read
            // them padded to four: `passes::pad_channels`). Differentiable: candle pads by
            // concatenating zeros, so the gradient is the slice of the padded one.
            "Pad" => {
                let x = inp(0)?;
                let mode = tamp_onnx::graph::attr_str(n, "mode").unwrap_or("constant");
                let zero_value = match ins.get(2).and_then(Option::as_ref) {
                    Some(c) => scalar_f(c)? == 0.0,
                    None => true,
                };
                if mode != "constant" || !zero_value || ins.get(3).and_then(Option::as_ref).is_some() {
                    return Err(node_err(n, "only constant zero padding over every axis is supported for training"));
                }
                let pads = ints(inp(1)?)?;
                let r = x.rank();
                if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) {
                    return Err(node_err(n, format!("pads {pads:?} for a rank-{r} input (negative pads crop, not supported)")));
                }
                let mut y = x.clone();
                for a in 0..r {
                    if pads[a] > 0 || pads[a + r] > 0 {
                        y = y.pad_with_zeros(a, pads[a] as usize, pads[a + r] as usize)?;
                    }
                }
                one(y)
            }
            "Slice" => {
                let x = inp(0)?;
                let (starts, ends) = (ints(inp(1)?)?, ints(inp(2)?)?);
                let axes: Vec<usize> = match ins.get(3).and_then(Option::as_ref) {
                    Some(a) => ints(a)?.iter().map(|&a| norm_axis(a, x.rank())).collect(),
                    None => (0..starts.len()).collect(),
                };
                let steps = match ins.get(4).and_then(Option::as_ref) {
                    Some(s) => ints(s)?,
                    None => vec![1; starts.len()],
                };
                let mut y = x.clone();
                for (k, &ax) in axes.iter().enumerate() {
                    let d = y.dims()[ax] as i64;
                    let step = steps[k];
                    let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
                    if step == 1 {
                        let (s, e) = (fix(starts[k], 0, d), fix(ends[k], 0, d));
                        y = y.narrow(ax, s as usize, (e - s).max(0) as usize)?;
                    } else {
                        let (s, e) = if step > 0 { (fix(starts[k], 0, d), fix(ends[k], 0, d)) } else { (fix(starts[k], 0, d - 1), fix(ends[k], -1, d - 1)) };
                        let mut idx = Vec::new();
                        let mut v = s;
                        while (step > 0 && v < e) || (step < 0 && v > e) {
                            idx.push(v as u32);
                            v += step;
                        }
                        let len = idx.len();
                        y = y.contiguous()?.index_select(&Tensor::from_vec(idx, len, y.device())?, ax)?;
                    }
                }
                one(y)
            }
            "QuantizeLinear" => {
                // Kept in float: the value of round(x/s)+zp, clipped, with a straight-through
                // gradient; the DequantizeLinear reading it undoes the affine map.
                let (x, s) = (inp(0)?, inp(1)?);
                let zp = ins.get(2).and_then(Option::as_ref);
                // The zero point's element type is the quantized type (none: uint8).
                let signed = n.input.get(2).is_some_and(|name| self.int8.contains(name));
                let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
                let axis = norm_axis(i("axis", 1), x.rank().max(1));
                let (s, z) = per_axis(s, zp, x.rank(), axis)?;
                let t = x.broadcast_div(&s)?.broadcast_add(&z)?;
                one(ste_round(&t)?.clamp(lo as f32, hi as f32)?)
            }
            "DequantizeLinear" => {
                let x = inp(0)?;
                if n.input.first().is_some_and(|q| self.quant.contains_key(q)) {
                    // A trained weight, already fake-quantized when read.
                    return one(x.clone());
                }
                let axis = norm_axis(i("axis", 1), x.rank().max(1));
                let (s, z) = per_axis(inp(1)?, ins.get(2).and_then(Option::as_ref), x.rank(), axis)?;
                one(x.to_dtype(DType::F32)?.broadcast_sub(&z)?.broadcast_mul(&s)?)
            }
            other => Err(GraphError::Unsupported { node: node_label(n), op: other.to_owned(), supported: SUPPORTED.join(", ") }),
        }
    }

    fn conv(&self, n: &NodeProto, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        if x.rank() != 4 || w.rank() != 4 {
            return Err(node_err(n, format!("only 2-D convolution trains here (input rank {})", x.rank())));
        }
        let (cout, cin_g, kh, kw) = w.dims4()?;
        let group = attr_int(n, "group", 1).max(1) as usize;
        let geo = Geometry::of(n, x, (kh, kw))?;
        let (nb, c, h, wd) = x.dims4()?;
        let (ho, wo) = geo.out;
        let k = kh * kw;
        if !x.device().is_cpu() {
            return gpu_conv(n, x, w, b, &geo, group);
        }
        let win = Window { c, h, w: wd, kh, kw, stride: geo.stride, dilation: geo.dilation, pad: (geo.pads[0], geo.pads[1]), out: geo.out };
        if group == 1 && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            let train = x.track_op() || w.track_op();
            let y = x.contiguous()?.apply_op2(&w.contiguous()?, Conv2d::new(win, cout, train))?;
            return Ok(match b {
                Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?)?,
                None => y,
            });
        }
        // [N·Ho·Wo, C·kh·kw], columns in the weight's own order.
        let col = x.contiguous()?.apply_op1(Im2Col(win))?;
        let y = if group == 1 {
            crate::blas::matmul(&col, &w.reshape((cout, c * k))?.t()?)?
        } else if group == c && cin_g == 1 {
            // Depthwise (channel multiplier m = M / C): Σ_k patch_k · w[:, k].
            let m = cout / c;
            let col = col.reshape((nb * ho * wo, c, 1, k))?;
            col.broadcast_mul(&w.reshape((1, c, m, k))?)?.sum(3)?.reshape((nb * ho * wo, cout))?
        } else {
            let (gin, gout) = (c / group, cout / group);
            let mut outs = Vec::with_capacity(group);
            for gi in 0..group {
                let wg = w.narrow(0, gi * gout, gout)?.reshape((gout, gin * k))?;
                outs.push(crate::blas::matmul(&col.narrow(1, gi * gin * k, gin * k)?.contiguous()?, &wg.t()?)?);
            }
            Tensor::cat(&outs, 1)?
        };
        let y = y.reshape((nb, ho, wo, cout))?.permute((0, 3, 1, 2))?.contiguous()?;
        Ok(match b {
            Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?)?,
            None => y,
        })
    }

    fn pool(&self, n: &NodeProto, x: &Tensor) -> Result<Tensor> {
        let k = attr_ints(n, "kernel_shape");
        if x.rank() != 4 || k.len() != 2 {
            return Err(node_err(n, "only 2-D pooling trains here"));
        }
        let geo = Geometry::of(n, x, (k[0] as usize, k[1] as usize))?;
        if op(n) == "MaxPool" {
            let cols = patches(x, &geo, f64::from(f32::MIN))?;
            return Ok(cols.iter().skip(1).try_fold(cols[0].clone(), |a, b| a.maximum(b))?);
        }
        let cols = patches(x, &geo, 0.0)?;
        let sum = cols.iter().skip(1).try_fold(cols[0].clone(), |a, b| a.add(b))?;
        let padded = geo.pads.iter().any(|&p| p > 0);
        if !padded || attr_int(n, "count_include_pad", 0) != 0 {
            return Ok(sum.affine(1.0 / cols.len() as f64, 0.0)?);
        }
        // Divide by the number of real (unpadded) positions under each window.
        let ones = Tensor::ones((1, 1, x.dim(2)?, x.dim(3)?), DType::F32, x.device())?;
        let counts = patches(&ones, &geo, 0.0)?;
        let count = counts.iter().skip(1).try_fold(counts[0].clone(), |a, b| a.add(b))?;
        Ok(sum.broadcast_div(&count)?)
    }

    fn batch_norm(&mut self, n: &NodeProto, ins: &[Option<Tensor>], mode: Mode) -> Result<Tensor> {
        let get = |k: usize| ins.get(k).and_then(Option::as_ref).ok_or_else(|| node_err(n, format!("input {k} is missing")));
        let (x, gamma, beta) = (get(0)?, get(1)?, get(2)?);
        let eps = f64::from(attr_float(n, "epsilon", 1e-5));
        let x = x.contiguous()?;
        if !x.device().is_cpu() {
            return self.gpu_batch_norm(n, &x, gamma, beta, ins, eps, mode);
        }
        let batch = std::sync::Arc::new(std::sync::Mutex::new(None));
        let running = match mode {
            Mode::Train => None,
            Mode::Eval => Some((get(3)?.flatten_all()?.to_vec1::<f32>()?, get(4)?.flatten_all()?.to_vec1::<f32>()?)),
        };
        let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, crate::bn::BatchNorm { eps, running, batch: batch.clone() })?;
        if mode == Mode::Train {
            // Running statistics move toward the batch's (unbiased variance, as PyTorch).
            let kept = batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let (mean, var) = kept.ok_or_else(|| node_err(n, "batch statistics were not computed"))?;
            let momentum = f64::from(attr_float(n, "momentum", 0.9));
            let count = (x.elem_count() / x.dim(1)?.max(1)) as f64;
            let unbiased = count / (count - 1.0).max(1.0);
            for (slot, batch, k) in [(3usize, &mean, 1.0), (4, &var, unbiased)] {
                let name = &n.input[slot];
                if let Some(r) = self.running.get(name) {
                    let old = r.flatten_all()?.to_vec1::<f32>()?;
                    let new: Vec<f32> = old.iter().zip(batch).map(|(&o, &b)| (f64::from(o) * momentum + b * k * (1.0 - momentum)) as f32).collect();
                    self.running.insert(name.clone(), Tensor::from_vec(new, r.shape(), &self.device)?);
                }
            }
        }
        Ok(y)
    }
}

/// A convolution on a GPU: candle's own kernels (im2col + cuBLAS forward, its transposed
/// convolution backward). [`Im2Col`] is a CPU op; on the CPU it is the faster path.
fn gpu_conv(n: &NodeProto, x: &Tensor, w: &Tensor, b: Option<&Tensor>, geo: &Geometry, group: usize) -> Result<Tensor> {
    if geo.stride.0 != geo.stride.1 || geo.dilation.0 != geo.dilation.1 {
        return Err(node_err(n, "on a GPU only equal strides and dilations along both axes train; use `device: cpu`"));
    }
    let [t, l, bo, r] = [geo.pads[0], geo.pads[1], geo.pads[2], geo.pads[3]];
    let (x, pad) = if t == bo && l == r && t == l { (x.clone(), t) } else { (x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?, 0) };
    let y = x.contiguous()?.conv2d(&w.contiguous()?, pad, geo.stride.0, geo.dilation.0, group)?;
    Ok(match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    })
}

impl TrainGraph {
    /// BatchNormalization from candle's broadcasting ops, for devices other than the CPU (the
    /// custom op in `bn.rs` is CPU code). Training uses the batch's statistics, gradient
    /// through them, and moves the running ones as on the CPU.
    #[allow(clippy::too_many_arguments)]
    fn gpu_batch_norm(&mut self, n: &NodeProto, x: &Tensor, gamma: &Tensor, beta: &Tensor, ins: &[Option<Tensor>], eps: f64, mode: Mode) -> Result<Tensor> {
        let c = x.dim(1)?;
        let mut shape = vec![1usize; x.rank()];
        shape[1] = c;
        let (mean, var) = match mode {
            Mode::Train => {
                let per_channel = x.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
                let mean = per_channel.mean_keepdim(1)?;
                let var = per_channel.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
                let momentum = f64::from(attr_float(n, "momentum", 0.9));
                let count = (x.elem_count() / c.max(1)) as f64;
                let unbiased = count / (count - 1.0).max(1.0);
                for (slot, batch, k) in [(3usize, &mean, 1.0), (4, &var, unbiased)] {
                    let name = &n.input[slot];
                    if let Some(r) = self.running.get(name) {
                        let moved = (r.flatten_all()?.affine(momentum, 0.0)? + batch.detach().flatten_all()?.affine(k * (1.0 - momentum), 0.0)?)?;
                        self.running.insert(name.clone(), moved.reshape(r.shape())?);
                    }
                }
                (mean.reshape(shape.clone())?, var.reshape(shape.clone())?)
            }
            Mode::Eval => {
                let get = |k: usize| ins.get(k).and_then(Option::as_ref).ok_or_else(|| node_err(n, format!("input {k} is missing")));
                (get(3)?.reshape(shape.clone())?, get(4)?.reshape(shape.clone())?)
            }
        };
        let y = x.broadcast_sub(&mean)?.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&gamma.reshape(shape.clone())?)?.broadcast_add(&beta.reshape(shape)?)?)
    }
}

/// Round with a straight-through gradient.
pub(super) fn ste_round(t: &Tensor) -> Result<Tensor> {
    let r = t.round()?;
    Ok((t + (r - t)?.detach())?)
}

/// Fake quantization of a weight: `(clamp(round(w/s) + z) - z) · s`, straight-through.
pub(super) fn fake_quant(w: &Tensor, scale: &Tensor, zero: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let q = ste_round(&w.broadcast_div(scale)?.broadcast_add(zero)?)?.clamp(lo as f32, hi as f32)?;
    Ok(q.broadcast_sub(zero)?.broadcast_mul(scale)?)
}

fn per_axis(s: &Tensor, zp: Option<&Tensor>, rank: usize, axis: usize) -> Result<(Tensor, Tensor)> {
    let s = s.to_dtype(DType::F32)?;
    let z = match zp {
        Some(z) => z.to_dtype(DType::F32)?,
        None => s.zeros_like()?,
    };
    if s.rank() == 0 || s.elem_count() == 1 {
        return Ok((s.flatten_all()?.reshape(())?, z.flatten_all()?.reshape(())?));
    }
    let mut dims = vec![1usize; rank];
    dims[axis] = s.elem_count();
    Ok((s.reshape(dims.clone())?, z.reshape(dims)?))
}

fn norm_axis(a: i64, rank: usize) -> usize {
    if a < 0 { (a + rank as i64).max(0) as usize } else { a as usize }
}

fn broadcast_shape(shapes: &[&Shape]) -> Result<Shape> {
    let mut s = shapes[0].clone();
    for o in &shapes[1..] {
        s = s.broadcast_shape_binary_op(o, "broadcast")?;
    }
    Ok(s)
}

/// MatMul with ONNX broadcasting; a 2-D right side (weights) is one flat matmul.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = if a.rank() == 1 { a.unsqueeze(0)? } else { a.clone() };
    if b.rank() == 2 && a.rank() >= 2 {
        let dims = a.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = crate::blas::matmul(&a.contiguous()?.reshape((rows, k))?, b)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(b.dim(1)?);
        return Ok(y.reshape(out)?);
    }
    if b.rank() >= 2 && a.rank() == b.rank() && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2] {
        return Ok(crate::blas::matmul(&a, b)?);
    }
    Ok(a.contiguous()?.broadcast_matmul(&b.contiguous()?)?)
}

/// Pads, strides, dilations and the output size of a 2-D window op.
struct Geometry {
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    /// top, left, bottom, right
    pads: [usize; 4],
    out: (usize, usize),
}

impl Geometry {
    fn of(n: &NodeProto, x: &Tensor, kernel: (usize, usize)) -> Result<Self> {
        let (_, _, h, w) = x.dims4()?;
        let two = |name: &str| -> (usize, usize) {
            match attr_ints(n, name) {
                [a, b] => (*a as usize, *b as usize),
                _ => (1, 1),
            }
        };
        let (stride, dilation) = (two("strides"), two("dilations"));
        let ek = ((kernel.0 - 1) * dilation.0 + 1, (kernel.1 - 1) * dilation.1 + 1);
        let auto = attr(n, "auto_pad").and_then(|a| a.s.as_deref()).map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
        let pads = match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let total = |size: usize, s: usize, k: usize| (size.div_ceil(s) - 1) * s + k - size.min((size.div_ceil(s) - 1) * s + k);
                let (th, tw) = (total(h, stride.0, ek.0), total(w, stride.1, ek.1));
                if auto == "SAME_UPPER" { [th / 2, tw / 2, th - th / 2, tw - tw / 2] } else { [th - th / 2, tw - tw / 2, th / 2, tw / 2] }
            }
            "VALID" => [0; 4],
            _ => match attr_ints(n, "pads") {
                [a, b, c, d] => [*a as usize, *b as usize, *c as usize, *d as usize],
                _ => [0; 4],
            },
        };
        if attr_int(n, "ceil_mode", 0) != 0 {
            return Err(node_err(n, "ceil_mode pooling does not train here"));
        }
        let hp = h + pads[0] + pads[2];
        let wp = w + pads[1] + pads[3];
        if hp < ek.0 || wp < ek.1 {
            return Err(node_err(n, "the window is larger than the padded input"));
        }
        let out = ((hp - ek.0) / stride.0 + 1, (wp - ek.1) / stride.1 + 1);
        Ok(Self { kernel, stride, dilation, pads, out })
    }
}

/// The input under each window position, as kh·kw tensors [N, C, Ho, Wo] (row-major over
/// the kernel). Strided picks are reshape + narrow (cheap in both directions).
fn patches(x: &Tensor, g: &Geometry, pad_value: f64) -> Result<Vec<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let (s0, s1) = g.stride;
    // Extra bottom/right rows so every strided reshape has whole strides.
    let extra = (s0.saturating_sub(1), s1.saturating_sub(1));
    let pad = |t: Tensor, dim: usize, lo: usize, hi: usize| -> candle_core::Result<Tensor> {
        if lo == 0 && hi == 0 {
            return Ok(t);
        }
        if pad_value == 0.0 {
            return t.pad_with_zeros(dim, lo, hi);
        }
        let mut parts = Vec::new();
        let mut dims = t.dims().to_vec();
        if lo > 0 {
            dims[dim] = lo;
            parts.push(Tensor::full(pad_value as f32, dims.clone(), t.device())?);
        }
        parts.push(t.clone());
        if hi > 0 {
            dims[dim] = hi;
            parts.push(Tensor::full(pad_value as f32, dims, t.device())?);
        }
        Tensor::cat(&parts, dim)
    };
    let xp = pad(x.clone(), 2, g.pads[0], g.pads[2] + extra.0)?;
    let xp = pad(xp, 3, g.pads[1], g.pads[3] + extra.1)?;
    let (ho, wo) = g.out;
    let _ = (h, w);
    let mut out = Vec::with_capacity(g.kernel.0 * g.kernel.1);
    for dy in 0..g.kernel.0 {
        for dx in 0..g.kernel.1 {
            let mut t = xp.narrow(2, dy * g.dilation.0, ho * s0)?.narrow(3, dx * g.dilation.1, wo * s1)?;
            if s0 > 1 {
                t = t.reshape((n, c, ho, s0, wo * s1))?.narrow(3, 0, 1)?.reshape((n, c, ho, wo * s1))?;
            }
            if s1 > 1 {
                t = t.reshape((n, c, ho, wo, s1))?.narrow(4, 0, 1)?.reshape((n, c, ho, wo))?;
            }
            out.push(t);
        }
    }
    Ok(out)
}
