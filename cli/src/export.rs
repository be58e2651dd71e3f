//! `tamp export`: an ONNX model written for another runtime (TFLite today), or the list of
//! nodes that runtime cannot take.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tamp_export::tflite::{self, Options, Precision};
use tamp_onnx::Model;

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx file (fp32, or Tamp's int8 QDQ output).
    model: PathBuf,
    /// Target: `tflite`; `torchscript` (a `.pt` for `torch.jit.load`, fp32); `codebook` (a clustered model as codebooks + Huffman-coded indices,
    /// `.tcb`); `onnx` (decode a `.tcb` back to the ONNX model, every weight bit-exact).
    #[arg(long, default_value = "tflite", value_parser = ["tflite", "torchscript", "codebook", "onnx"])]
    runtime: String,
    /// fp32; dynamic-int8 (int8 weights, float activations); int8 (int8 wherever the model's
    /// QDQ pairs are: give it Tamp's int8 model). Default: int8 when the model has QDQ pairs.
    #[arg(long, value_parser = ["fp32", "dynamic-int8", "int8"])]
    precision: Option<String>,
    /// Fixed shape for an input with dynamic dimensions, ONNX order: `name=1,3,224,224`
    /// (repeatable; a dynamic batch dimension defaults to 1).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shapes: Vec<String>,
    /// Where to write the exported model.
    #[arg(long)]
    out: PathBuf,
    /// Also write what was exported (ops by type and precision, inputs, outputs) as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    match a.runtime.as_str() {
        "codebook" => return codebook(a),
        "onnx" => return from_codebook(a),
        "torchscript" => return torchscript(a),
        _ => {}
    }
    let loaded = Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    // Models from other toolchains: opset upgrade and shape computations folded for the
    // declared shapes, exactly as `tamp compress` prepares them (no change to outputs).
    let (model, preparation) = tamp_engine::prepare::prepare(&loaded)?;
    if !preparation.is_empty() {
        eprintln!("prepared: {}", preparation.steps.join("; "));
    }
    let precision = match a.precision.as_deref() {
        Some("fp32") => Precision::Float32,
        Some("dynamic-int8") => Precision::DynamicInt8,
        Some(_) => Precision::Int8,
        None => Precision::of(&model),
    };
    let mut input_shapes = HashMap::new();
    for s in &a.input_shapes {
        let (name, dims) = s.split_once('=').with_context(|| format!("--input-shape {s}: expected NAME=D0,D1,…"))?;
        let dims: Vec<usize> = dims
            .split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--input-shape {s}: dimensions must be positive integers"))?;
        input_shapes.insert(name.to_owned(), dims);
    }
    let started = std::time::Instant::now();
    let exported = match tflite::export(&model, &Options { precision, input_shapes }) {
        Ok(e) => e,
        Err(problems) => {
            for p in &problems {
                eprintln!("  {p}");
            }
            bail!("{} cannot be exported to {}: {} problem(s) listed above", a.model.display(), a.runtime, problems.len());
        }
    };
    let tmp = a.out.with_extension("tflite.tmp");
    std::fs::write(&tmp, &exported.bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    let int8_ops: usize = exported.op_counts.iter().filter(|(k, _)| k.ends_with(":int8")).map(|(_, v)| v).sum();
    let all_ops: usize = exported.op_counts.values().sum();
    println!(
        "{} → {} ({}, {:.2} MB, {all_ops} ops, {int8_ops} on int8 inputs, {:.2} s)",
        a.model.display(),
        a.out.display(),
        precision.as_str(),
        exported.bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    for (name, shape) in &exported.inputs {
        println!("  input  {name} {shape:?}{}", if shape.len() == 4 { " (NHWC)" } else { "" });
    }
    for (name, shape) in &exported.outputs {
        println!("  output {name} {shape:?}");
    }
    if let Some(r) = &a.report {
        let json = serde_json::json!({
            "runtime": a.runtime,
            "precision": precision.as_str(),
            "size_bytes": exported.bytes.len(),
            "ops": exported.op_counts,
            "inputs": exported.inputs.iter().map(|(n, s)| serde_json::json!({"name": n, "shape": s, "layout": if s.len() == 4 { "NHWC" } else { "as ONNX" }})).collect::<Vec<_>>(),
            "outputs": exported.outputs.iter().map(|(n, s)| serde_json::json!({"name": n, "shape": s})).collect::<Vec<_>>(),
        });
        std::fs::write(r, serde_json::to_vec_pretty(&json)?).with_context(|| format!("writing {}", r.display()))?;
    }
    Ok(())
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `--runtime codebook`: the coded file and its size beside the ONNX file's, raw and deflated.
fn codebook(a: &Args) -> Result<()> {
    use std::io::Write;
    let onnx = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let model = Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let (bytes, report) = tamp_export::codebook::encode(&model).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        report.coded_tensors > 0,
        "{} has no float weight with at most {} distinct values: cluster it first (`clustering:` stage)",
        a.model.display(),
        tamp_export::codebook::MAX_CODEBOOK
    );
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&onnx)?;
    let deflated = z.finish()?.len();
    write_atomic(&a.out, &bytes)?;
    println!(
        "{} → {}: {} tensors, {} weights at {:.2} bits each; {:.3} MB coded vs {:.3} MB ONNX, {:.3} MB deflated ({:.2}× smaller than deflate)",
        a.model.display(),
        a.out.display(),
        report.coded_tensors,
        report.coded_weights,
        report.bits_per_weight,
        bytes.len() as f64 / 1e6,
        onnx.len() as f64 / 1e6,
        deflated as f64 / 1e6,
        deflated as f64 / bytes.len() as f64
    );
    if let Some(r) = &a.report {
        let json =
            serde_json::json!({ "runtime": "codebook", "report": report, "onnx_bytes": onnx.len(), "deflate_bytes": deflated, "coded_bytes": bytes.len() });
        std::fs::write(r, serde_json::to_vec_pretty(&json)?).with_context(|| format!("writing {}", r.display()))?;
    }
    Ok(())
}

/// `--runtime onnx` on a `.tcb`: the ONNX model back.
fn from_codebook(a: &Args) -> Result<()> {
    let bytes = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let model = tamp_export::codebook::decode(&bytes, &a.model).map_err(anyhow::Error::msg)?;
    write_atomic(&a.out, &model.to_bytes()?)?;
    println!("{} → {} (decoded)", a.model.display(), a.out.display());
    Ok(())
}

/// `--runtime torchscript`: the fp32 model as a TorchScript archive.
fn torchscript(a: &Args) -> Result<()> {
    let model = Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let stem = a.out.file_stem().and_then(|s| s.to_str()).filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).unwrap_or("model");
    let bytes = match tamp_export::torchscript::export(&model, stem) {
        Ok(b) => b,
        Err(problems) => {
            for p in &problems {
                eprintln!("  {p}");
            }
            bail!("{} cannot be exported to torchscript: {} problem(s) listed above", a.model.display(), problems.len());
        }
    };
    write_atomic(&a.out, &bytes)?;
    println!("{} → {} (TorchScript, fp32, {:.2} MB)", a.model.display(), a.out.display(), bytes.len() as f64 / 1e6);
    Ok(())
}
