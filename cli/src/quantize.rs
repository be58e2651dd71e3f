//! `tamp quantize`: static int8 PTQ (QDQ) of one model with one calibration set.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tamp_domain::recipe::{Calibration, CalibrationMethod};
use tamp_engine::Dataset;
use tamp_engine::calibrate::Method;
use tamp_engine::passes::quantize::ActivationType;
use tamp_engine::passes::{DynamicConfig, QuantizeConfig};
use tamp_engine::ptq::{PtqConfig, quantize_dynamic, quantize_static};
use tamp_onnx::{Model, SaveOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The fp32 .onnx file.
    model: PathBuf,
    /// Calibration .npz (arrays named after the model inputs); not needed with --dynamic.
    #[arg(long, required_unless_present_any = ["dynamic", "weights4"])]
    data: Option<PathBuf>,
    /// Dynamic int8 (weights ahead of time, activations at run time): for transformers.
    #[arg(long)]
    dynamic: bool,
    /// With --dynamic: smooth wide activation channels into the weights first (SmoothQuant,
    /// strength chosen per layer on --data's rows; one Mul in front of each smoothed layer).
    #[arg(long, requires_all = ["dynamic", "data"])]
    smooth: bool,
    /// 4-bit weight-only MatMuls (MatMulNBits, blocks of 32) and Conv weights (int4) with int8 embeddings; with --data, Conv biases are corrected for the weights' error.
    #[arg(long, conflicts_with = "dynamic")]
    weights4: bool,
    /// Where to write the int8 model.
    #[arg(long)]
    out: PathBuf,
    /// How activation ranges are chosen: minmax, kl (entropy), percentile, mse, or auto (each of
    /// minmax, percentile 99.9/99.99/99.999 and kl tried; the closest to fp32 on the calibration rows kept).
    #[arg(long, default_value = "minmax")]
    method: CalibrationMethod,
    /// The model output your quality is judged on: --method auto compares the candidates on it
    /// alone (default: every float output).
    #[arg(long)]
    output: Option<String>,
    /// Percentile of |x| for --method percentile.
    #[arg(long, default_value_t = Calibration::default().percentile)]
    percentile: f64,
    /// Calibration rows (seeded sample).
    #[arg(long, default_value_t = Calibration::default().samples)]
    samples: usize,
    #[arg(long, default_value_t = Calibration::default().seed)]
    seed: u64,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Keep BatchNormalization nodes instead of folding them into the layer before.
    #[arg(long)]
    no_fold_bn: bool,
    /// Cross-layer equalization of Conv → [Relu] → Conv pairs before calibrating.
    #[arg(long)]
    cle: bool,
    /// Skip empirical bias correction (on by default: each layer's bias absorbs its
    /// weight-quantization error times its mean input from calibration).
    #[arg(long)]
    no_bias_correction: bool,
    /// Asymmetric uint8 weights with zero points (symmetric int8 otherwise).
    #[arg(long)]
    asymmetric: bool,
    /// Quantize every layer, also those ONNX Runtime runs slower in int8 (single-input-
    /// channel Convs, kept float by default).
    #[arg(long)]
    int8_everywhere: bool,
    /// int8 activations (uint8 otherwise, ONNX Runtime's x86 default).
    #[arg(long)]
    int8_activations: bool,
    /// int8 activations with zero point 0 (TensorRT-style; implies --int8-activations).
    #[arg(long)]
    symmetric_activations: bool,
    /// Also write the run's report (ranges, counts) as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The CPU instruction set to quantize for: auto (this machine), avx2, avx512, vnni, amx.
    /// Without VNNI (avx2, avx512) weights are stored uint8: ONNX Runtime's u8×s8 kernels saturate.
    #[arg(long, default_value = "auto", value_parser = parse_isa)]
    target_isa: tamp_engine::isa::TargetIsa,
}

fn parse_isa(s: &str) -> Result<tamp_engine::isa::TargetIsa, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| format!("unknown ISA '{s}' (auto, avx2, avx512, vnni, amx)"))
}

pub fn run(args: &Args) -> Result<()> {
    let model = Model::load(&args.model)?;
    // Models from other toolchains: opset upgrade, constant folding (exact; reported).
    let (model, preparation) = tamp_engine::prepare::prepare(&model)?;
    if !preparation.is_empty() {
        eprintln!("prepared: {}", preparation.steps.join("; "));
    }
    // uint8 weights where this CPU's u8×s8 kernels saturate (no VNNI).
    let isa = tamp_engine::isa::choose(args.target_isa);
    if isa.u8_weights {
        eprintln!("target ISA {:?} has no VNNI: uint8 weights (zero point 128) so ONNX Runtime runs U8U8 kernels, whose sums cannot saturate", isa.target);
    }
    if args.weights4 {
        // With calibration rows, 4-bit Conv weights are bias-corrected.
        let data = args.data.as_deref().map(Dataset::load).transpose()?;
        let means = match &data {
            Some(d) => tamp_engine::ptq::conv4_input_means(&model, &tamp_engine::ptq::MeanRows { data: d, samples: args.samples, seed: args.seed })?,
            None => Default::default(),
        };
        let (quantized, n) = tamp_engine::ptq::quantize_4bit_corrected(&model, &tamp_engine::passes::NBitsConfig::default(), &means)?;
        quantized.save(&args.out, &SaveOptions::default())?;
        let corrected = match &data {
            Some(d) => format!(", Conv biases corrected on {} calibration rows", args.samples.min(d.rows)),
            None => String::new(),
        };
        println!("{}", summary(args, &format!("4-bit weight-only, {n} layers with 4-bit weights (MatMul/Gemm as MatMulNBits, Conv weights int4){corrected}"))?);
        return Ok(());
    }
    if args.dynamic {
        let mut smoothed = String::new();
        let model = match (&args.data, args.smooth) {
            (Some(path), true) => {
                let data = Dataset::load(path)?;
                let cfg = tamp_engine::smooth::SmoothConfig { rows: args.samples.min(64), seed: args.seed, ..Default::default() };
                let (m, report) = tamp_engine::smooth::smooth(&model, &data, &cfg, &Default::default())?;
                smoothed = format!(", {} of {} MatMul inputs smoothed", report.smoothed.len(), report.sites);
                m
            }
            _ => model,
        };
        let (quantized, counts) =
            quantize_dynamic(&model, &DynamicConfig { per_channel: !args.per_tensor, u8_weights: isa.u8_weights, ..DynamicConfig::default() })?;
        quantized.save(&args.out, &SaveOptions::default())?;
        println!(
            "{}",
            summary(
                args,
                &format!(
                    "dynamic int8, {} MatMuls, {} embedding tables and {} weights inside If/Loop bodies quantized{smoothed}",
                    counts.matmuls, counts.embeddings, counts.subgraph_weights
                )
            )?
        );
        return Ok(());
    }
    let Some(data_path) = &args.data else { anyhow::bail!("--data is required for static quantization") };
    let data = Dataset::load(data_path)?;
    let cfg = PtqConfig {
        method: Method::from(&Calibration { method: args.method, percentile: args.percentile, ..Calibration::default() }),
        samples: args.samples,
        seed: args.seed,
        fold_batch_norm: !args.no_fold_bn,
        cross_layer_equalization: args.cle,
        bias_correction: !args.no_bias_correction,
        quantize: QuantizeConfig {
            per_channel: !args.per_tensor,
            symmetric: !args.asymmetric,
            bias_correction: !args.no_bias_correction,
            float_slow_layers: !args.int8_everywhere,
            activations: if args.int8_activations || args.symmetric_activations { ActivationType::Int8 } else { ActivationType::Uint8 },
            symmetric_activations: args.symmetric_activations,
            u8_weights: isa.u8_weights,
            ..QuantizeConfig::default()
        },
        output: args.output.clone(),
        ..PtqConfig::default()
    };
    let (quantized, report) = quantize_static(&model, &data, &cfg)?;
    quantized.save(&args.out, &SaveOptions::default())?;
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let before = std::fs::metadata(&args.model)?.len();
    let after = std::fs::metadata(&args.out)?.len();
    println!(
        "{} -> {}: {} calibration rows ({:?}), {} batch norms folded, {} activations and {} weights quantized, {} -> {} ({:.2}x smaller)",
        args.model.display(),
        args.out.display(),
        report.calibration_rows,
        report.method,
        report.folded_batch_norms,
        report.quantized_activations,
        report.quantized_weights,
        crate::eval::human_bytes(before),
        crate::eval::human_bytes(after),
        before as f64 / after.max(1) as f64
    );
    if !report.method_trials.is_empty() {
        let rows = report.calibration_rows.min(tamp_engine::calibrate_auto::AUTO_ROWS);
        println!(
            "calibration auto: kept {} (outputs' cosine to fp32 on {rows} calibration rows: {})",
            report.method.label(),
            tamp_engine::calibrate_auto::describe(&report.method_trials)
        );
    }
    if !report.float_ops.is_empty() {
        println!("left in float: {:?}", report.float_ops);
    }
    if report.calibration_trimmed_padding {
        println!("padded sequences calibrated at their true lengths (attention_mask): pad positions left out of the ranges");
    }
    if !report.float_for_speed.is_empty() {
        println!("kept in float because ONNX Runtime runs them slower in int8 (--int8-everywhere quantizes them too):");
        for r in &report.float_for_speed_reasons {
            println!("  {r}");
        }
        if report.float_for_speed_reasons.is_empty() {
            println!("  {:?}", report.float_for_speed);
        }
    }
    Ok(())
}

/// `in -> out: <what>, <size before> -> <size after> (<ratio>x smaller)`.
fn summary(args: &Args, what: &str) -> Result<String> {
    let (before, after) = (std::fs::metadata(&args.model)?.len(), std::fs::metadata(&args.out)?.len());
    Ok(format!(
        "{} -> {}: {what}, {} -> {} ({:.2}x smaller)",
        args.model.display(),
        args.out.display(),
        crate::eval::human_bytes(before),
        crate::eval::human_bytes(after),
        before as f64 / after.max(1) as f64
    ))
}
