//! Serialises an [`ir::Graph`] into a `.tflite` flatbuffer (file identifier `TFL3`, schema
//! version 3) with the `flatc`-generated builders.

use std::collections::HashMap;

use flatbuffers::{FlatBufferBuilder, Push, PushAlignment, UnionWIPOffset, WIPOffset};

use super::ir::{self, Act, DType, Op, Padding};
use super::schema::tflite as fb;

/// Constant buffers start 16-byte aligned, as the schema's `force_align: 16` asks: kernels
/// read float and int32 constants in place.
struct Align16;

#[allow(unsafe_code)]
impl Push for Align16 {
    type Output = u8;
    // Never called: only `start_vector::<Align16>` uses the type, to align the data.
    unsafe fn push(&self, _dst: &mut [u8], _written_len: usize) {}
    fn size() -> usize {
        1
    }
    fn alignment() -> PushAlignment {
        PushAlignment::new(16)
    }
}

fn tensor_type(d: DType) -> fb::TensorType {
    match d {
        DType::F32 => fb::TensorType::FLOAT32,
        DType::I8 => fb::TensorType::INT8,
        DType::I32 => fb::TensorType::INT32,
        DType::I64 => fb::TensorType::INT64,
    }
}

fn act(a: Act) -> fb::ActivationFunctionType {
    match a {
        Act::None => fb::ActivationFunctionType::NONE,
        Act::Relu => fb::ActivationFunctionType::RELU,
        Act::Relu6 => fb::ActivationFunctionType::RELU6,
        Act::ReluN1To1 => fb::ActivationFunctionType::RELU_N1_TO_1,
    }
}

fn padding(p: Padding) -> fb::Padding {
    match p {
        Padding::Same => fb::Padding::SAME,
        Padding::Valid => fb::Padding::VALID,
    }
}

fn builtin(op: &Op) -> fb::BuiltinOperator {
    use fb::BuiltinOperator as B;
    match op {
        Op::Conv2d { .. } => B::CONV_2D,
        Op::DepthwiseConv2d { .. } => B::DEPTHWISE_CONV_2D,
        Op::FullyConnected { .. } => B::FULLY_CONNECTED,
        Op::Add { .. } => B::ADD,
        Op::Sub { .. } => B::SUB,
        Op::Mul { .. } => B::MUL,
        Op::Div { .. } => B::DIV,
        Op::Mean { .. } => B::MEAN,
        Op::AveragePool2d { .. } => B::AVERAGE_POOL_2D,
        Op::MaxPool2d { .. } => B::MAX_POOL_2D,
        Op::Reshape => B::RESHAPE,
        Op::Transpose => B::TRANSPOSE,
        Op::Pad => B::PAD,
        Op::Concatenation { .. } => B::CONCATENATION,
        Op::Softmax { .. } => B::SOFTMAX,
        Op::Relu => B::RELU,
        Op::Relu6 => B::RELU6,
        Op::ReluN1To1 => B::RELU_N1_TO_1,
        Op::Logistic => B::LOGISTIC,
        Op::Tanh => B::TANH,
        Op::HardSwish => B::HARD_SWISH,
        Op::Quantize => B::QUANTIZE,
        Op::Dequantize => B::DEQUANTIZE,
    }
}

/// The op's builtin options table, if it has one.
fn options<'a>(b: &mut FlatBufferBuilder<'a>, op: &Op) -> (fb::BuiltinOptions, Option<WIPOffset<UnionWIPOffset>>) {
    use fb::BuiltinOptions as O;
    match *op {
        Op::Conv2d { padding: p, stride, dilation, act: a } => {
            let args = fb::Conv2DOptionsArgs {
                padding: padding(p),
                stride_h: stride[0],
                stride_w: stride[1],
                dilation_h_factor: dilation[0],
                dilation_w_factor: dilation[1],
                fused_activation_function: act(a),
                ..Default::default()
            };
            (O::Conv2DOptions, Some(fb::Conv2DOptions::create(b, &args).as_union_value()))
        }
        Op::DepthwiseConv2d { padding: p, stride, dilation, multiplier, act: a } => {
            let args = fb::DepthwiseConv2DOptionsArgs {
                padding: padding(p),
                stride_h: stride[0],
                stride_w: stride[1],
                dilation_h_factor: dilation[0],
                dilation_w_factor: dilation[1],
                depth_multiplier: multiplier,
                fused_activation_function: act(a),
            };
            (O::DepthwiseConv2DOptions, Some(fb::DepthwiseConv2DOptions::create(b, &args).as_union_value()))
        }
        Op::FullyConnected { act: a } => {
            let args = fb::FullyConnectedOptionsArgs { fused_activation_function: act(a), ..Default::default() };
            (O::FullyConnectedOptions, Some(fb::FullyConnectedOptions::create(b, &args).as_union_value()))
        }
        Op::Add { act: a } => {
            let args = fb::AddOptionsArgs { fused_activation_function: act(a), ..Default::default() };
            (O::AddOptions, Some(fb::AddOptions::create(b, &args).as_union_value()))
        }
        Op::Sub { act: a } => {
            let args = fb::SubOptionsArgs { fused_activation_function: act(a), ..Default::default() };
            (O::SubOptions, Some(fb::SubOptions::create(b, &args).as_union_value()))
        }
        Op::Mul { act: a } => {
            let args = fb::MulOptionsArgs { fused_activation_function: act(a) };
            (O::MulOptions, Some(fb::MulOptions::create(b, &args).as_union_value()))
        }
        Op::Div { act: a } => {
            let args = fb::DivOptionsArgs { fused_activation_function: act(a) };
            (O::DivOptions, Some(fb::DivOptions::create(b, &args).as_union_value()))
        }
        Op::Mean { keep_dims } => (O::ReducerOptions, Some(fb::ReducerOptions::create(b, &fb::ReducerOptionsArgs { keep_dims }).as_union_value())),
        Op::AveragePool2d { padding: p, stride, filter, act: a } | Op::MaxPool2d { padding: p, stride, filter, act: a } => {
            let args = fb::Pool2DOptionsArgs {
                padding: padding(p),
                stride_h: stride[0],
                stride_w: stride[1],
                filter_height: filter[0],
                filter_width: filter[1],
                fused_activation_function: act(a),
            };
            (O::Pool2DOptions, Some(fb::Pool2DOptions::create(b, &args).as_union_value()))
        }
        Op::Reshape => (O::ReshapeOptions, Some(fb::ReshapeOptions::create(b, &fb::ReshapeOptionsArgs { new_shape: None }).as_union_value())),
        Op::Transpose => (O::TransposeOptions, Some(fb::TransposeOptions::create(b, &fb::TransposeOptionsArgs {}).as_union_value())),
        Op::Pad => (O::PadOptions, Some(fb::PadOptions::create(b, &fb::PadOptionsArgs {}).as_union_value())),
        Op::Concatenation { axis, act: a } => {
            let args = fb::ConcatenationOptionsArgs { axis, fused_activation_function: act(a) };
            (O::ConcatenationOptions, Some(fb::ConcatenationOptions::create(b, &args).as_union_value()))
        }
        Op::Softmax { beta } => (O::SoftmaxOptions, Some(fb::SoftmaxOptions::create(b, &fb::SoftmaxOptionsArgs { beta }).as_union_value())),
        Op::HardSwish => (O::HardSwishOptions, Some(fb::HardSwishOptions::create(b, &fb::HardSwishOptionsArgs {}).as_union_value())),
        Op::Quantize => (O::QuantizeOptions, Some(fb::QuantizeOptions::create(b, &fb::QuantizeOptionsArgs {}).as_union_value())),
        Op::Dequantize => (O::DequantizeOptions, Some(fb::DequantizeOptions::create(b, &fb::DequantizeOptionsArgs {}).as_union_value())),
        Op::Relu | Op::Relu6 | Op::ReluN1To1 | Op::Logistic | Op::Tanh => (O::NONE, None),
    }
}

/// The `.tflite` bytes of `g`.
pub fn to_bytes(g: &ir::Graph) -> Vec<u8> {
    let total: usize = g.tensors.iter().filter_map(|t| t.data.as_ref().map(Vec::len)).sum();
    let mut b = FlatBufferBuilder::with_capacity(total + 64 * 1024);

    // Buffers: 0 is the empty sentinel every activation points at.
    let mut buffers = vec![fb::Buffer::create(&mut b, &fb::BufferArgs::default())];
    let mut tensors = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        let buffer = match &t.data {
            Some(data) => {
                b.start_vector::<Align16>(data.len());
                for &byte in data.iter().rev() {
                    b.push(byte);
                }
                let v = b.end_vector::<u8>(data.len());
                buffers.push(fb::Buffer::create(&mut b, &fb::BufferArgs { data: Some(v), ..Default::default() }));
                u32::try_from(buffers.len() - 1).unwrap_or(u32::MAX)
            }
            None => 0,
        };
        let shape = b.create_vector(&t.shape);
        let name = b.create_string(&t.name);
        let quantization = t.quant.as_ref().map(|q| {
            let scale = b.create_vector(&q.scale);
            let zero_point = b.create_vector(&q.zero_point);
            fb::QuantizationParameters::create(
                &mut b,
                &fb::QuantizationParametersArgs { scale: Some(scale), zero_point: Some(zero_point), quantized_dimension: q.axis, ..Default::default() },
            )
        });
        tensors.push(fb::Tensor::create(
            &mut b,
            &fb::TensorArgs { shape: Some(shape), type_: tensor_type(t.dtype), buffer, name: Some(name), quantization, has_rank: true, ..Default::default() },
        ));
    }

    // One OperatorCode per (builtin, version).
    let mut codes: Vec<(fb::BuiltinOperator, i32)> = Vec::new();
    let mut code_index: HashMap<(i32, i32), u32> = HashMap::new();
    let mut operators = Vec::with_capacity(g.operators.len());
    for o in &g.operators {
        let code = builtin(&o.op);
        let opcode_index = *code_index.entry((code.0, o.version)).or_insert_with(|| {
            codes.push((code, o.version));
            u32::try_from(codes.len() - 1).unwrap_or(u32::MAX)
        });
        let inputs = b.create_vector(&o.inputs);
        let outputs = b.create_vector(&o.outputs);
        let (builtin_options_type, builtin_options) = options(&mut b, &o.op);
        operators.push(fb::Operator::create(
            &mut b,
            &fb::OperatorArgs { opcode_index, inputs: Some(inputs), outputs: Some(outputs), builtin_options_type, builtin_options, ..Default::default() },
        ));
    }
    let codes: Vec<_> = codes
        .iter()
        .map(|&(code, version)| {
            // Codes below 127 also go in the deprecated byte field older readers use.
            let deprecated_builtin_code = i8::try_from(code.0.min(127)).unwrap_or(127);
            fb::OperatorCode::create(&mut b, &fb::OperatorCodeArgs { deprecated_builtin_code, custom_code: None, version, builtin_code: code })
        })
        .collect();

    let tensors = b.create_vector(&tensors);
    let inputs = b.create_vector(&g.inputs);
    let outputs = b.create_vector(&g.outputs);
    let operators = b.create_vector(&operators);
    let name = b.create_string("main");
    let subgraph = fb::SubGraph::create(
        &mut b,
        &fb::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(inputs),
            outputs: Some(outputs),
            operators: Some(operators),
            name: Some(name),
            ..Default::default()
        },
    );
    let subgraphs = b.create_vector(&[subgraph]);
    let operator_codes = b.create_vector(&codes);
    let buffers = b.create_vector(&buffers);
    let description = b.create_string(&g.description);
    let model = fb::Model::create(
        &mut b,
        &fb::ModelArgs {
            version: 3,
            operator_codes: Some(operator_codes),
            subgraphs: Some(subgraphs),
            description: Some(description),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    b.finish(model, Some("TFL3"));
    b.finished_data().to_vec()
}
