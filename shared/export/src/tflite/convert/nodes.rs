//! The converter's node emitters: one method per ONNX op family (Conv, Gemm/MatMul,
//! BatchNormalization, elementwise, activations, pooling, Flatten/Reshape, Softmax, Concat),
//! each choosing int8 or float and writing TFLite operators through the [`Cx`] helpers.

use ndarray::IxDyn;
use tamp_onnx::graph::{attr, attr_float, attr_int, attr_ints};
use tamp_onnx::proto::NodeProto;

use super::*;

impl Cx<'_> {
    pub(super) fn node(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let op = op_of(n);
        match op {
            "Conv" => self.conv(n, fusion),
            "Gemm" | "MatMul" => self.fully_connected(n, fusion),
            "BatchNormalization" => self.batch_norm(n, fusion),
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n, fusion),
            "Relu" | "Clip" => self.activation(n),
            "Sigmoid" | "Tanh" | "HardSwish" => self.unary_float(n),
            "GlobalAveragePool" => self.global_average_pool(n),
            "MaxPool" | "AveragePool" => self.pool(n),
            "Flatten" | "Reshape" => self.reshape(n),
            "Softmax" => self.softmax(n),
            "Concat" => self.concat(n),
            "Identity" | "Dropout" => {
                let x = &n.input[0];
                let v = if self.dq_of.contains_key(x) && self.opts.precision == Precision::Int8 {
                    let (t, p) = self.quant_in(x)?;
                    let (shape, nhwc) = self.meta(x).unwrap_or_default();
                    Value { shape, nhwc, f: None, q: Some((t, p)) }
                } else {
                    let t = self.float_in(x)?;
                    let (shape, nhwc) = self.meta(x).unwrap_or_default();
                    Value { shape, nhwc, f: Some(t), q: None }
                };
                self.vals.insert(n.output[0].clone(), v);
                Ok(())
            }
            "QuantizeLinear" | "DequantizeLinear" => Err(Self::fail(
                n,
                "a QuantizeLinear/DequantizeLinear that is not an 8-bit per-tensor activation pair (or not in int8 export)",
                "export the int8 model with --precision int8, or the float model for fp32",
            )),
            "MatMulNBits" | "MatMulInteger" | "DynamicQuantizeLinear" | "QLinearConv" | "QLinearMatMul" | "ConvInteger" => Err(Self::fail(
                n,
                "an ONNX Runtime integer form (4-bit MatMulNBits, dynamic or QOperator int8) with no TFLite equivalent here",
                "export the float model (dynamic-int8 precision) or Tamp's static QDQ int8 instead",
            )),
            _ => Err(Self::fail(
                n,
                format!("{op} has no TFLite builtin in Tamp's exporter"),
                "keep this model on ONNX Runtime (`targets: [onnxruntime]`), or replace the op before export",
            )),
        }
    }

    /// Int8 output parameters when the op may run in int8: the export is int8, every
    /// activation input comes through a QDQ pair, and the (fused) output is quantized.
    fn int8_out(&self, inputs: &[&str], out: &str) -> Option<Qp> {
        if self.opts.precision != Precision::Int8 || !inputs.iter().all(|i| self.has_quant(i)) {
            return None;
        }
        self.out_q.get(out).copied()
    }

    fn conv(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let x = n.input[0].as_str();
        let w_name = n.input.get(1).map(String::as_str).unwrap_or("");
        let b_name = n.input.get(2).map(String::as_str).filter(|s| !s.is_empty());
        let (xs, _) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 4 {
            return Err(Self::fail(
                n,
                format!("{}-D convolution: only 2-D (NCHW) convolutions are exported", xs.len().saturating_sub(2)),
                "export to ONNX Runtime",
            ));
        }
        let wk = self.consts.get(w_name).cloned().ok_or_else(|| Self::fail(n, "the weight is not a constant", "fold the weight into an initializer"))?;
        if wk.f.ndim() != 4 {
            return Err(Self::fail(n, "weight is not 4-D", "export to ONNX Runtime"));
        }
        let ws = wk.f.shape().to_vec();
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let group = usize::try_from(attr_int(n, "group", 1)).unwrap_or(1);
        let c = xs[1];
        let depthwise = group > 1 && group == c && cg == 1;
        if group != 1 && !depthwise {
            return Err(Self::fail(
                n,
                format!("grouped convolution (group {group} of {c} channels): TFLite has only regular and depthwise convolutions"),
                "export to ONNX Runtime, or split the groups",
            ));
        }
        let strides = attr_ints(n, "strides");
        let dil = attr_ints(n, "dilations");
        let (Some(stride), Some(dilation)) = (window(strides), window(dil)) else {
            return Err(Self::fail(n, "strides and dilations must be positive", "repair the model"));
        };
        if kh == 0 || kw == 0 {
            return Err(Self::fail(n, "an empty kernel", "repair the model"));
        }
        let mut pads = [0usize; 4];
        let auto_pad = attr(n, "auto_pad").and_then(|a| a.s.clone()).map(|s| String::from_utf8_lossy(&s).into_owned()).unwrap_or_default();
        for (i, p) in attr_ints(n, "pads").iter().enumerate().take(4) {
            pads[i] = usize::try_from(*p).unwrap_or(0);
        }
        if auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER" {
            for d in 0..2 {
                let (inp, k) = ([xs[2], xs[3]][d], [kh, kw][d]);
                let out = inp.div_ceil(stride[d]);
                let total = ((out - 1) * stride[d] + (k - 1) * dilation[d] + 1).saturating_sub(inp);
                let (lo, hi) = if auto_pad == "SAME_UPPER" { (total / 2, total - total / 2) } else { (total - total / 2, total / 2) };
                pads[d] = lo;
                pads[d + 2] = hi;
            }
        }
        let oh = conv_out(xs[2], kh, stride[0], dilation[0], pads[0], pads[2])
            .ok_or_else(|| Self::fail(n, "kernel larger than the padded input", "check the input shape"))?;
        let ow = conv_out(xs[3], kw, stride[1], dilation[1], pads[1], pads[3])
            .ok_or_else(|| Self::fail(n, "kernel larger than the padded input", "check the input shape"))?;

        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        // Float weights and bias, with a following BatchNormalization folded in.
        let mut wf = wk.f.clone();
        let mut bf: Vec<f32> = b_name.and_then(|b| self.consts.get(b)).map_or_else(|| vec![0.0; m], |k| k.f.iter().copied().collect());
        if bf.len() != m {
            return Err(Self::fail(n, format!("bias has {} values for {m} output channels", bf.len()), "check the model"));
        }
        if let Some(bn) = fusion.bn {
            let bn = &self.view.graph.node[bn];
            let get = |i: usize| self.consts.get(&bn.input[i]).map(|k| k.f.iter().copied().collect::<Vec<f32>>());
            let (Some(gamma), Some(beta), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4)) else {
                return Err(Self::fail(n, "BatchNormalization parameters are not constants", "fold them into initializers"));
            };
            let eps = attr_float(bn, "epsilon", 1e-5);
            for o in 0..m {
                let s = gamma[o] / (var[o] + eps).sqrt();
                wf.index_axis_mut(Axis(0), o).mapv_inplace(|v| v * s);
                bf[o] = (bf[o] - mean[o]) * s + beta[o];
            }
        }
        let int8 = if fusion.bn.is_none() { self.int8_out(&[x], &fusion.out) } else { None };

        // Explicit pads TFLite's SAME does not express: a PAD in front.
        let padding = padding_for([xs[2], xs[3]], [kh, kw], stride, dilation, pads);
        let mut xin = self.nhwc_in(x, int8.is_some())?;
        let padding = match padding {
            Some(p) => p,
            None => {
                let pad_t = self.const_tensor(
                    &format!("{}.pads", node_name(n)),
                    &[4, 2],
                    i32_bytes(&[0, 0, pads[0] as i32, pads[2] as i32, pads[1] as i32, pads[3] as i32, 0, 0]),
                    DType::I32,
                    None,
                );
                let src = self.g.tensor(xin).clone();
                let padded = self.g.add(Tensor {
                    name: format!("{}.padded", node_name(n)),
                    shape: shape_i32(&[xs[0], xs[2] + pads[0] + pads[2], xs[3] + pads[1] + pads[3], c]),
                    data: None,
                    ..src
                });
                self.push(Op::Pad, if int8.is_some() { 3 } else { 1 }, vec![xin, pad_t], vec![padded]);
                xin = padded;
                Padding::Valid
            }
        };
        // OIHW → OHWI (regular) or [1, kh, kw, M] (depthwise).
        let w_perm: Vec<usize> = if depthwise { vec![1, 2, 3, 0] } else { vec![0, 2, 3, 1] };
        let w_shape = permute(&ws, &w_perm);
        let q_axis = if depthwise { 3 } else { 0 };
        let name = node_name(n);
        let out_shape = [xs[0], m, oh, ow];
        let stride_i = [stride[0] as i32, stride[1] as i32];
        let dilation_i = [dilation[0] as i32, dilation[1] as i32];
        let conv_op = |act| {
            if depthwise {
                Op::DepthwiseConv2d { padding, stride: stride_i, dilation: dilation_i, multiplier: (m / c) as i32, act }
            } else {
                Op::Conv2d { padding, stride: stride_i, dilation: dilation_i, act }
            }
        };
        match int8 {
            Some(out_p) => {
                let in_p = self.quant_in(x)?.1;
                let (wq, wscale) = int8_weights(&wk, &wf, 0);
                let wq = wq.permuted_axes(IxDyn(&w_perm)).as_standard_layout().to_owned();
                let w_t = self.int8_const(&format!("{w_name}.int8"), &wq, wscale.clone(), q_axis);
                let b_t = self.int32_bias(&format!("{name}.bias.int32"), &bf, in_p.scale, &wscale);
                let out = self.out_tensor(&fusion.out, &out_shape, true, Some(out_p));
                self.push(conv_op(fusion.act), 3, vec![xin, w_t, b_t], vec![out]);
            }
            None => {
                let wf_l = wf.permuted_axes(IxDyn(&w_perm)).as_standard_layout().to_owned();
                let stored = if fusion.bn.is_none() { self.dequantized_weight(w_name, &wk, 0, &w_perm, q_axis) } else { None };
                let w_t = if let Some(t) = stored {
                    t
                } else if self.opts.precision == Precision::DynamicInt8 && !depthwise {
                    let (wq, wscale) = symmetric_per_channel(&wf_l, q_axis as usize);
                    self.int8_const(&format!("{w_name}.int8"), &wq, wscale, q_axis)
                } else {
                    self.const_tensor(&format!("{w_name}.ohwi"), &w_shape, f32_bytes(&wf_l.iter().copied().collect::<Vec<_>>()), DType::F32, None)
                };
                let hybrid = self.g.tensor(w_t).dtype == DType::I8;
                let b_t = self.const_tensor(&format!("{name}.bias"), &[m], f32_bytes(&bf), DType::F32, None);
                let out = self.out_tensor(&fusion.out, &out_shape, true, None);
                self.push(conv_op(fusion.act), if hybrid { 5 } else { 1 }, vec![xin, w_t, b_t], vec![out]);
            }
        }
        Ok(())
    }

    fn fully_connected(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let op = op_of(n);
        let a = n.input[0].as_str();
        let b_name = n.input.get(1).map(String::as_str).unwrap_or("");
        let c_name = if op == "Gemm" { n.input.get(2).map(String::as_str).filter(|s| !s.is_empty()) } else { None };
        let Some(bk) = self.consts.get(b_name).cloned() else {
            return Err(Self::fail(
                n,
                "the second operand is an activation, not a constant weight",
                "TFLite's FULLY_CONNECTED needs constant weights; export to ONNX Runtime",
            ));
        };
        if bk.f.ndim() != 2 {
            return Err(Self::fail(n, format!("{}-D weight", bk.f.ndim()), "only 2-D weights become FULLY_CONNECTED"));
        }
        let (xs, _) = self.meta(a).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 2 {
            return Err(Self::fail(
                n,
                format!("{}-D input to a matrix product: the exporter writes 2-D FULLY_CONNECTED", xs.len()),
                "flatten to 2-D first, or export to ONNX Runtime",
            ));
        }
        if op == "Gemm" && attr_int(n, "transA", 0) != 0 {
            return Err(Self::fail(n, "Gemm with transA", "re-export without transA"));
        }
        let trans_b = op == "Gemm" && attr_int(n, "transB", 0) != 0;
        let alpha = if op == "Gemm" { attr_float(n, "alpha", 1.0) } else { 1.0 };
        let beta = if op == "Gemm" { attr_float(n, "beta", 1.0) } else { 1.0 };
        // TFLite wants [out, in].
        let mut w = if trans_b { bk.f.clone() } else { bk.f.clone().reversed_axes().as_standard_layout().to_owned() };
        let (m, k) = (w.shape()[0], w.shape()[1]);
        if xs.last().copied() != Some(k) {
            return Err(Self::fail(n, format!("input width {:?} does not match the weight's {k}", xs.last()), "check the model"));
        }
        if alpha != 1.0 {
            w.mapv_inplace(|v| v * alpha);
        }
        let mut bias: Vec<f32> = c_name.and_then(|c| self.consts.get(c)).map_or_else(|| vec![0.0; m], |k| k.f.iter().map(|v| v * beta).collect());
        if c_name.is_some() && bias.len() == 1 {
            bias = vec![bias[0]; m];
        }
        if bias.len() != m {
            if let Some(c) = c_name
                && !self.consts.contains_key(c)
            {
                return Err(Self::fail(n, "the bias is an activation", "export to ONNX Runtime"));
            }
            return Err(Self::fail(n, format!("bias of {} values for {m} outputs", bias.len()), "check the model"));
        }
        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        let mut out_shape = xs.clone();
        if let Some(l) = out_shape.last_mut() {
            *l = m;
        }
        let name = node_name(n);
        let int8 = self.int8_out(&[a], &fusion.out).filter(|_| alpha == 1.0);
        match int8 {
            Some(out_p) => {
                let (xin, in_p) = self.quant_in(a)?;
                let kq = if trans_b { bk.clone() } else { Konst { f: w.clone(), i: None, q: None } };
                let (wq, wscale) = int8_weights(&kq, &w, 0);
                let w_t = self.int8_const(&format!("{b_name}.int8"), &wq, wscale.clone(), 0);
                let b_t = self.int32_bias(&format!("{name}.bias.int32"), &bias, in_p.scale, &wscale);
                let out = self.out_tensor(&fusion.out, &out_shape, false, Some(out_p));
                self.push(Op::FullyConnected { act: fusion.act }, 4, vec![xin, w_t, b_t], vec![out]);
            }
            None => {
                let xin = self.float_in(a)?;
                let perm: [usize; 2] = if trans_b { [0, 1] } else { [1, 0] };
                let stored = if alpha == 1.0 { self.dequantized_weight(b_name, &bk, perm[0], &perm, 0) } else { None };
                let w_t = if let Some(t) = stored {
                    t
                } else if self.opts.precision == Precision::DynamicInt8 {
                    let (wq, wscale) = symmetric_per_channel(&w, 0);
                    self.int8_const(&format!("{b_name}.int8"), &wq, wscale, 0)
                } else {
                    self.const_tensor(&format!("{b_name}.oi"), &[m, k], f32_bytes(&w.iter().copied().collect::<Vec<_>>()), DType::F32, None)
                };
                let hybrid = self.g.tensor(w_t).dtype == DType::I8;
                let b_t = self.const_tensor(&format!("{name}.bias"), &[m], f32_bytes(&bias), DType::F32, None);
                let out = self.out_tensor(&fusion.out, &out_shape, false, None);
                self.push(Op::FullyConnected { act: fusion.act }, if hybrid { 3 } else { 1 }, vec![xin, w_t, b_t], vec![out]);
            }
        }
        Ok(())
    }

    fn batch_norm(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let x = n.input[0].as_str();
        let get = |i: usize| n.input.get(i).and_then(|v| self.consts.get(v)).map(|k| k.f.iter().copied().collect::<Vec<f32>>());
        let (Some(gamma), Some(beta), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4)) else {
            return Err(Self::fail(n, "parameters are not constants", "fold them into initializers"));
        };
        let eps = attr_float(n, "epsilon", 1e-5);
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift: Vec<f32> = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        let (xs, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let c = scale.len();
        let cshape: Vec<usize> = if nhwc { vec![c] } else { std::iter::once(c).chain(std::iter::repeat_n(1, xs.len().saturating_sub(2))).collect() };
        let xin = self.float_in(x)?;
        let name = node_name(n);
        let s_t = self.const_tensor(&format!("{name}.scale"), &cshape, f32_bytes(&scale), DType::F32, None);
        let b_t = self.const_tensor(&format!("{name}.shift"), &cshape, f32_bytes(&shift), DType::F32, None);
        let mid = self.out_tensor(&format!("{name}.scaled"), &xs, nhwc, None);
        self.push(Op::Mul { act: Act::None }, 1, vec![xin, s_t], vec![mid]);
        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        let out = self.out_tensor(&fusion.out, &xs, nhwc, None);
        self.push(Op::Add { act: fusion.act }, 1, vec![mid, b_t], vec![out]);
        Ok(())
    }

    fn binary(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let op = op_of(n);
        let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        let make = |act| match op {
            "Add" => Op::Add { act },
            "Sub" => Op::Sub { act },
            "Mul" => Op::Mul { act },
            _ => Op::Div { act },
        };
        let (a_const, b_const) = (self.consts.contains_key(a), self.consts.contains_key(b));
        if a_const && b_const {
            return Err(Self::fail(n, "both operands constant but not folded", "internal"));
        }
        if !a_const && !b_const {
            let (sa, na) = self.meta(a).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
            let (sb, nb) = self.meta(b).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
            let out_shape = broadcast(&sa, &sb).ok_or_else(|| Self::fail(n, format!("shapes {sa:?} and {sb:?} do not broadcast"), "check the model"))?;
            let nhwc = out_shape.len() == 4 && (na || nb);
            if nhwc && (sa.len() != 4 || sb.len() != 4) {
                return Err(Self::fail(n, "a 4-D activation combined with a lower-rank one", "export to ONNX Runtime"));
            }
            let int8 = if matches!(op, "Add" | "Sub" | "Mul") { self.int8_out(&[a, b], &fusion.out) } else { None };
            let (ta, tb) = if nhwc {
                (self.nhwc_in(a, int8.is_some())?, self.nhwc_in(b, int8.is_some())?)
            } else if int8.is_some() {
                (self.quant_in(a)?.0, self.quant_in(b)?.0)
            } else {
                (self.float_in(a)?, self.float_in(b)?)
            };
            let out = self.out_tensor(&fusion.out, &out_shape, nhwc, int8);
            self.push(make(fusion.act), if int8.is_some() { 2 } else { 1 }, vec![ta, tb], vec![out]);
            return Ok(());
        }
        let (act_in, const_in) = if a_const { (b, a) } else { (a, b) };
        let (sx, nx) = self.meta(act_in).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let nhwc = nx && sx.len() == 4;
        let xin = self.float_in(act_in)?;
        let (ct, cshape) = self.elementwise_const(const_in, nhwc)?;
        let out_shape = broadcast(&sx, &cshape).ok_or_else(|| Self::fail(n, format!("shapes {sx:?} and {cshape:?} do not broadcast"), "check the model"))?;
        if nhwc && out_shape.len() != 4 {
            return Err(Self::fail(n, "broadcast changes the rank of a 4-D activation", "export to ONNX Runtime"));
        }
        let out = self.out_tensor(&fusion.out, &out_shape, nhwc, None);
        let ins = if a_const { vec![ct, xin] } else { vec![xin, ct] };
        self.push(make(fusion.act), 1, ins, vec![out]);
        Ok(())
    }

    fn activation(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let act = self.activation_of(n).ok_or_else(|| Self::fail(n, "Clip with bounds other than [0, 6], [-1, 1] or [0, ∞)", "export to ONNX Runtime"))?;
        let op = match act {
            Act::Relu => Op::Relu,
            Act::Relu6 => Op::Relu6,
            Act::ReluN1To1 => Op::ReluN1To1,
            Act::None => return Err(Self::fail(n, "no activation", "internal")),
        };
        let (shape, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let out_name = n.output[0].clone();
        let int8 = self.int8_out(&[x], &out_name);
        let xin = if int8.is_some() { self.quant_in(x)?.0 } else { self.float_in(x)? };
        let out = self.out_tensor(&out_name, &shape, nhwc, int8);
        self.push(op, if int8.is_some() { 2 } else { 1 }, vec![xin], vec![out]);
        Ok(())
    }

    fn unary_float(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (shape, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let xin = self.float_in(x)?;
        let out = self.out_tensor(&n.output[0], &shape, nhwc, None);
        let op = match op_of(n) {
            "Sigmoid" => Op::Logistic,
            "Tanh" => Op::Tanh,
            _ => Op::HardSwish,
        };
        self.push(op, 1, vec![xin], vec![out]);
        Ok(())
    }

    fn global_average_pool(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, _) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 4 {
            return Err(Self::fail(n, "only 2-D pooling is exported", "export to ONNX Runtime"));
        }
        let out_name = n.output[0].clone();
        let int8 = self.int8_out(&[x], &out_name);
        let xin = self.nhwc_in(x, int8.is_some())?;
        let axes = self.i32_const(&format!("{}.axes", node_name(n)), &[1, 2]);
        let out = self.out_tensor(&out_name, &[xs[0], xs[1], 1, 1], true, int8);
        self.push(Op::Mean { keep_dims: true }, if int8.is_some() { 2 } else { 1 }, vec![xin, axes], vec![out]);
        Ok(())
    }

    fn pool(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, _) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 4 {
            return Err(Self::fail(n, "only 2-D pooling is exported", "export to ONNX Runtime"));
        }
        if n.output.len() > 1 && !n.output[1].is_empty() {
            return Err(Self::fail(n, "MaxPool with indices", "export to ONNX Runtime"));
        }
        let k = attr_ints(n, "kernel_shape");
        let s = attr_ints(n, "strides");
        let (Some(kernel), Some(stride)) = (window(k), window(s)) else {
            return Err(Self::fail(n, "kernel_shape and strides must be positive", "repair the model"));
        };
        let mut pads = [0usize; 4];
        for (i, p) in attr_ints(n, "pads").iter().enumerate().take(4) {
            pads[i] = usize::try_from(*p).unwrap_or(0);
        }
        if attr_int(n, "ceil_mode", 0) != 0 || attr_ints(n, "dilations").iter().any(|&d| d != 1) {
            return Err(Self::fail(n, "ceil_mode or dilated pooling", "export to ONNX Runtime"));
        }
        let max = op_of(n) == "MaxPool";
        let padding = padding_for([xs[2], xs[3]], kernel, stride, [1, 1], pads)
            .ok_or_else(|| Self::fail(n, format!("pads {pads:?} are neither SAME nor VALID for this input"), "export to ONNX Runtime"))?;
        if !max && padding == Padding::Same && attr_int(n, "count_include_pad", 0) != 0 {
            return Err(Self::fail(n, "AveragePool counting padded zeros (count_include_pad)", "export to ONNX Runtime"));
        }
        let oh = conv_out(xs[2], kernel[0], stride[0], 1, pads[0], pads[2]).unwrap_or(1);
        let ow = conv_out(xs[3], kernel[1], stride[1], 1, pads[1], pads[3]).unwrap_or(1);
        let out_name = n.output[0].clone();
        // MaxPool is exact on int8 with unchanged parameters; AveragePool needs its own.
        let int8 = if max && self.opts.precision == Precision::Int8 && self.has_quant(x) { Some(None) } else { self.int8_out(&[x], &out_name).map(Some) };
        let xin = self.nhwc_in(x, int8.is_some())?;
        let q = match int8 {
            Some(Some(p)) => Some(p),
            Some(None) => Some(self.quant_in(x)?.1),
            None => None,
        };
        let out = self.out_tensor(&out_name, &[xs[0], xs[1], oh, ow], true, q);
        let (filter, stride) = ([kernel[0] as i32, kernel[1] as i32], [stride[0] as i32, stride[1] as i32]);
        let op = if max { Op::MaxPool2d { padding, stride, filter, act: Act::None } } else { Op::AveragePool2d { padding, stride, filter, act: Act::None } };
        self.push(op, if q.is_some() { 2 } else { 1 }, vec![xin], vec![out]);
        Ok(())
    }

    fn reshape(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let out_shape = if op_of(n) == "Flatten" {
            let axis = attr_int(n, "axis", 1);
            let axis = usize::try_from(if axis < 0 { axis + xs.len() as i64 } else { axis }).unwrap_or(1).min(xs.len());
            vec![xs[..axis].iter().product(), xs[axis..].iter().product()]
        } else {
            let s = n
                .input
                .get(1)
                .and_then(|s| self.consts.get(s))
                .and_then(|k| k.i.clone())
                .ok_or_else(|| Self::fail(n, "the target shape is computed at run time", "fold shapes for a fixed input size before export"))?;
            if attr_int(n, "allowzero", 0) != 0 {
                return Err(Self::fail(n, "allowzero", "export to ONNX Runtime"));
            }
            reshape_dims(&xs, s.iter().copied())
                .ok_or_else(|| Self::fail(n, format!("cannot reshape {xs:?} to {:?}", s.iter().collect::<Vec<_>>()), "check the model"))?
        };
        let int8 = self.opts.precision == Precision::Int8 && self.has_quant(x);
        // Flattening NHWC [N, 1, 1, C] (or [N, H, W, 1]) is already NCHW order.
        let spatial_trivial = xs.len() == 4 && (xs[2] * xs[3] == 1 || xs[1] == 1);
        let xin = if nhwc && xs.len() == 4 && !spatial_trivial {
            self.nchw_in(x, int8)?
        } else if int8 {
            self.quant_in(x)?.0
        } else {
            self.float_in(x)?
        };
        let q = if int8 { Some(self.quant_in(x)?.1) } else { None };
        // A 4-D result is kept NCHW (consumers that need NHWC transpose it).
        let shape_t = self.i32_const(&format!("{}.shape", node_name(n)), &shape_i32(&out_shape));
        let out = self.out_tensor(&n.output[0], &out_shape, false, q);
        self.push(Op::Reshape, 1, vec![xin, shape_t], vec![out]);
        Ok(())
    }

    fn softmax(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let r = xs.len() as i64;
        let axis = attr_int(n, "axis", -1);
        let axis = if axis < 0 { axis + r } else { axis };
        let last_in_storage = if nhwc && xs.len() == 4 { axis == 1 } else { axis == r - 1 };
        if !last_in_storage {
            return Err(Self::fail(
                n,
                format!("softmax over axis {axis} of a rank-{r} tensor: TFLite's SOFTMAX works on the last axis"),
                "export to ONNX Runtime",
            ));
        }
        let xin = self.float_in(x)?;
        let out = self.out_tensor(&n.output[0], &xs, nhwc, None);
        self.push(Op::Softmax { beta: 1.0 }, 1, vec![xin], vec![out]);
        Ok(())
    }

    fn concat(&mut self, n: &NodeProto) -> Res<()> {
        let ins: Vec<&str> = n.input.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        if ins.iter().any(|i| self.consts.contains_key(*i)) {
            return Err(Self::fail(n, "a constant operand", "export to ONNX Runtime"));
        }
        let metas: Vec<(Vec<usize>, bool)> =
            ins.iter().map(|i| self.meta(i)).collect::<Option<_>>().ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let r = metas[0].0.len();
        let axis = attr_int(n, "axis", 1);
        let axis = usize::try_from(if axis < 0 { axis + r as i64 } else { axis }).unwrap_or(0);
        let nhwc = r == 4 && metas.iter().any(|m| m.1);
        let mut out_shape = metas[0].0.clone();
        out_shape[axis] = metas.iter().map(|m| m.0[axis]).sum();
        let mut ts = Vec::new();
        for i in &ins {
            ts.push(if nhwc { self.nhwc_in(i, false)? } else { self.float_in(i)? });
        }
        let t_axis = if nhwc { NCHW_TO_NHWC.iter().position(|&p| p == axis).unwrap_or(axis) } else { axis };
        let out = self.out_tensor(&n.output[0], &out_shape, nhwc, None);
        self.push(Op::Concatenation { axis: t_axis as i32, act: Act::None }, 1, ts, vec![out]);
        Ok(())
    }
}

/// A 2-D window attribute (strides, dilations, kernel sizes): each entry in 1..=65536,
/// missing entries 1; `None` for anything else (a value input can set).
fn window(v: &[i64]) -> Option<[usize; 2]> {
    let get = |i: usize| v.get(i).copied().unwrap_or(1);
    let ok = |x: i64| usize::try_from(x).ok().filter(|&x| (1..=65_536).contains(&x));
    Some([ok(get(0))?, ok(get(1))?])
}
