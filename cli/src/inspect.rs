//! `tamp inspect`: what a model is made of and whether ONNX Runtime can run it.

use std::path::PathBuf;

use anyhow::Result;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use tamp_engine::runtime::{IoSpec, Session, SessionConfig};
use tamp_onnx::Model;

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx file.
    model: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Inspection {
    path: PathBuf,
    size_bytes: u64,
    ir_version: i64,
    producer: String,
    opsets: Vec<(String, i64)>,
    nodes: usize,
    subgraphs: usize,
    params: usize,
    weight_bytes: usize,
    ops: std::collections::BTreeMap<String, usize>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    /// Why ONNX Runtime refuses the model, if it does.
    runtime_error: Option<String>,
    /// Ops outside the domains ONNX Runtime's CPU build implements.
    unknown_domain_ops: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let (model, file) = Model::load_with_info(&args.model)?;
    let stats = tamp_onnx::graph::stats(model.graph());
    let (inputs, outputs, runtime_error) = match Session::from_file(&args.model, &SessionConfig::default()) {
        Ok(s) => (s.inputs, s.outputs, None),
        Err(e) => (vec![], vec![], Some(e.to_string())),
    };
    let known = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"];
    let unknown_domain_ops = stats.ops.keys().filter(|k| k.split_once("::").is_some_and(|(d, _)| !known.contains(&d))).cloned().collect();
    let info = Inspection {
        size_bytes: file.size_bytes,
        path: args.model.clone(),
        ir_version: model.proto.ir_version.unwrap_or(0),
        producer: format!("{} {}", model.proto.producer_name.clone().unwrap_or_default(), model.proto.producer_version.clone().unwrap_or_default())
            .trim()
            .to_owned(),
        opsets: model
            .proto
            .opset_import
            .iter()
            .map(|o| (o.domain.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "ai.onnx".into()), o.version.unwrap_or(0)))
            .collect(),
        nodes: stats.nodes,
        subgraphs: stats.subgraphs,
        params: stats.params,
        weight_bytes: stats.weight_bytes,
        ops: stats.ops,
        inputs,
        outputs,
        runtime_error,
        unknown_domain_ops,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["model", &info.path.display().to_string()]);
    t.add_row(["size", &crate::eval::human_bytes(info.size_bytes)]);
    t.add_row(["parameters", &format!("{} ({} of weights)", info.params, crate::eval::human_bytes(info.weight_bytes as u64))]);
    t.add_row(["nodes", &format!("{} ({} subgraphs)", info.nodes, info.subgraphs)]);
    t.add_row(["ir / producer", &format!("{} / {}", info.ir_version, info.producer)]);
    t.add_row(["opsets", &info.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect::<Vec<_>>().join(", ")]);
    for i in &info.inputs {
        t.add_row(["input".to_owned(), format!("{} {:?} {:?}", i.name, i.elem, i.shape)]);
    }
    for o in &info.outputs {
        t.add_row(["output".to_owned(), format!("{} {:?} {:?}", o.name, o.elem, o.shape)]);
    }
    let runs = match (&info.runtime_error, info.unknown_domain_ops.is_empty()) {
        (None, true) => "yes".to_owned(),
        (None, false) => format!("loads, but ops {:?} come from custom domains", info.unknown_domain_ops),
        (Some(e), _) => format!("NO: {e}"),
    };
    t.add_row(["ONNX Runtime can run it", &runs]);
    println!("{t}");
    let mut ops = Table::new();
    ops.load_preset(UTF8_FULL_CONDENSED).set_header(["op", "count"]);
    let mut sorted: Vec<_> = info.ops.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in sorted {
        ops.add_row([op.clone(), n.to_string()]);
    }
    println!("{ops}");
    Ok(())
}
