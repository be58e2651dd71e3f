//! The TFLite graph the converter builds before it is serialised: tensors (shape, type,
//! constant bytes, quantization) and builtin operators with their options. Kept apart from
//! the flatbuffer so the conversion can be tested and counted without decoding bytes.

use std::collections::BTreeMap;

/// A tensor's element type (the subset of `tflite::TensorType` the exporter writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DType {
    F32,
    I8,
    I32,
    I64,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I8 => "int8",
            DType::I32 => "int32",
            DType::I64 => "int64",
        }
    }
}

/// Affine quantization: `real = scale · (q − zero_point)`, per tensor (one entry) or per
/// channel along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub axis: i32,
}

impl Quant {
    pub fn per_tensor(scale: f32, zero_point: i64) -> Self {
        Self { scale: vec![scale], zero_point: vec![zero_point], axis: 0 }
    }
}

/// One tensor of the subgraph.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub dtype: DType,
    /// Little-endian constant bytes; `None` for activations and graph inputs.
    pub data: Option<Vec<u8>>,
    pub quant: Option<Quant>,
}

/// A fused activation (`tflite::ActivationFunctionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
    ReluN1To1,
}

/// `SAME` or `VALID` (explicit pads become a `PAD` op in front).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
}

/// The builtin operators the exporter writes, with their options.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv2d { padding: Padding, stride: [i32; 2], dilation: [i32; 2], act: Act },
    DepthwiseConv2d { padding: Padding, stride: [i32; 2], dilation: [i32; 2], multiplier: i32, act: Act },
    FullyConnected { act: Act },
    Add { act: Act },
    Sub { act: Act },
    Mul { act: Act },
    Div { act: Act },
    Mean { keep_dims: bool },
    AveragePool2d { padding: Padding, stride: [i32; 2], filter: [i32; 2], act: Act },
    MaxPool2d { padding: Padding, stride: [i32; 2], filter: [i32; 2], act: Act },
    Reshape,
    Transpose,
    Pad,
    Concatenation { axis: i32, act: Act },
    Softmax { beta: f32 },
    Relu,
    Relu6,
    ReluN1To1,
    Logistic,
    Tanh,
    HardSwish,
    Quantize,
    Dequantize,
}

impl Op {
    /// The `BuiltinOperator` name, as TFLite prints it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "CONV_2D",
            Op::DepthwiseConv2d { .. } => "DEPTHWISE_CONV_2D",
            Op::FullyConnected { .. } => "FULLY_CONNECTED",
            Op::Add { .. } => "ADD",
            Op::Sub { .. } => "SUB",
            Op::Mul { .. } => "MUL",
            Op::Div { .. } => "DIV",
            Op::Mean { .. } => "MEAN",
            Op::AveragePool2d { .. } => "AVERAGE_POOL_2D",
            Op::MaxPool2d { .. } => "MAX_POOL_2D",
            Op::Reshape => "RESHAPE",
            Op::Transpose => "TRANSPOSE",
            Op::Pad => "PAD",
            Op::Concatenation { .. } => "CONCATENATION",
            Op::Softmax { .. } => "SOFTMAX",
            Op::Relu => "RELU",
            Op::Relu6 => "RELU6",
            Op::ReluN1To1 => "RELU_N1_TO_1",
            Op::Logistic => "LOGISTIC",
            Op::Tanh => "TANH",
            Op::HardSwish => "HARD_SWISH",
            Op::Quantize => "QUANTIZE",
            Op::Dequantize => "DEQUANTIZE",
        }
    }
}

/// One operator: what it is, the version its kernel needs for these types, and tensor indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub op: Op,
    pub version: i32,
    /// `-1` marks an omitted optional input (e.g. no bias).
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
}

/// The whole (single-subgraph) model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub tensors: Vec<Tensor>,
    pub operators: Vec<Operator>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub description: String,
}

impl Graph {
    /// Adds a tensor and returns its index.
    pub fn add(&mut self, t: Tensor) -> i32 {
        self.tensors.push(t);
        i32::try_from(self.tensors.len() - 1).unwrap_or(i32::MAX)
    }

    pub fn tensor(&self, i: i32) -> &Tensor {
        &self.tensors[usize::try_from(i).unwrap_or(0)]
    }

    /// `(op name, input element type) → count`: how much of the graph runs in int8.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for o in &self.operators {
            let dt = o.inputs.first().filter(|&&i| i >= 0).map_or("-", |&i| self.tensor(i).dtype.as_str());
            *out.entry(format!("{}:{dt}", o.op.name())).or_insert(0) += 1;
        }
        out
    }
}
