//! `tamp-train-bench`: times Tamp's training step (forward + backward + AdamW update, the
//! fine-tuning code path itself) on an ONNX model, and exports the graph as JSON + weights
//! `.npz` so `scripts/bench_train.py` can run the same architecture, step and batch in
//! PyTorch, in the same run.
//!
//! Usage: tamp-train-bench --model M.onnx --data train.npz --batch 64 --steps 20 [--teacher]
//!        [--teacher-model T.onnx] [--export DIR] [--device cpu|cuda]
//!        [--epochs E --eval eval.npz]
//! `--device cuda` trains on GPU 0 (the `cuda` build; it fails in one line without a GPU).
//! `--epochs` times whole epochs instead (one run, set-up included) and scores the result on
//! `--eval` (top-1 on class labels, mean cosine on float labels), on the same device.
//! `TAMP_TRACE_RSS=1` prints the resident set after every step (memory checks).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tamp_data::{Dataset, write_npz};
use tamp_domain::recipe::{Device as Class, FineTune, LearningRate, LossKind, LrSchedule, Resources};
use tamp_onnx::graph::GraphView;
use tamp_onnx::proto::attribute_proto::AttributeType;
use tamp_onnx::tensor::{data_type, to_array};
use tamp_onnx::{Model, TensorValue};
use tamp_train::finetune::{Task, fine_tune};

/// Training allocates activation buffers of a different size every batch (sequence lengths
/// vary); glibc's heap kept the freed ones (RSS grew ~30 MB a step on MiniLM). mimalloc
/// reuses them at the same speed (docs/architecture.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let mut model = None;
    let mut data = None;
    let mut export = None;
    let mut teacher_model = None;
    let (mut batch, mut steps, mut teacher) = (64usize, 20usize, false);
    let (mut device, mut epochs, mut eval) = ("cpu".to_owned(), None::<f64>, None::<PathBuf>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(val()?)),
            "--data" => data = Some(PathBuf::from(val()?)),
            "--export" => export = Some(PathBuf::from(val()?)),
            "--batch" => batch = val()?.parse()?,
            "--steps" => steps = val()?.parse()?,
            "--teacher" => teacher = true,
            "--device" => device = val()?,
            "--epochs" => epochs = Some(val()?.parse()?),
            "--eval" => eval = Some(PathBuf::from(val()?)),
            "--teacher-model" => {
                teacher = true;
                teacher_model = Some(PathBuf::from(val()?));
            }
            other => bail!("unknown flag {other}; usage: tamp-train-bench --model M --data D [--batch B] [--steps N] [--teacher] [--export DIR]"),
        }
    }
    let (model_path, data_path) = (model.context("--model")?, data.context("--data")?);
    let class = if device == "cpu" { Class::Cpu } else { Class::Gpu };
    let chosen = tamp_train::device::choose(Resources { device: class, required: true }).map_err(|e| anyhow::anyhow!(e))?;
    tamp_train::device::use_device(chosen.device.clone());
    let m = Model::load(&model_path)?;
    let d = Dataset::load(&data_path)?;
    if let Some(dir) = &export {
        export_graph(&m, dir)?;
    }
    let output = tamp_train::graph::float_outputs(&m).into_iter().last().context("no float output")?;
    let other = teacher_model.map(Model::load).transpose()?;
    let task = Task { output: output.clone(), teacher: teacher.then_some(other.as_ref().unwrap_or(&m)), ..Task::default() };
    let loss = if teacher { LossKind::Cosine } else { LossKind::CrossEntropy };
    if let Some(epochs) = epochs {
        let cfg = FineTune { epochs, batch_size: batch, lr: LearningRate::Value(1e-4), loss, distill_weight: 0.0, seed: 1, ..FineTune::default() };
        let (trained, report) = fine_tune(&m, &task, &d, &cfg, &mut |_, _, _| {})?;
        let score = match &eval {
            Some(p) => {
                let e = Dataset::load(p)?;
                let rows: Vec<usize> = (0..e.rows).collect();
                Some(if matches!(e.labels, Some(tamp_data::Labels::Classes(_))) {
                    ("top1", tamp_train::finetune::top1(&trained, &e, &rows, &output)?)
                } else {
                    ("cosine", tamp_train::finetune::mean_cosine(&trained, &e, &rows, &output)?)
                })
            }
            None => None,
        };
        println!(
            "{}",
            json!({"model": model_path, "device": chosen.label, "batch": batch, "epochs": epochs, "steps": report.steps,
                   "train_seconds": report.wall_seconds, "loss_end": report.loss_end, "metric": score.map(|s| s.0), "score": score.map(|s| s.1)})
        );
        return Ok(());
    }
    let cfg = |n: usize| FineTune {
        steps: Some(n),
        batch_size: batch,
        lr: LearningRate::Value(1e-4),
        schedule: LrSchedule::Constant,
        loss,
        distill_weight: 0.0,
        seed: 1,
        ..FineTune::default()
    };
    // Two runs; the difference is the steady-state cost of `steps` steps (set-up excluded).
    // A first run loads what runs once per process (on a GPU, candle's kernel modules).
    let warm = 3;
    fine_tune(&m, &task, &d, &cfg(warm), &mut |_, _, _| {})?;
    let (_, short) = fine_tune(&m, &task, &d, &cfg(warm), &mut |_, _, _| {})?;
    let trace = std::env::var_os("TAMP_TRACE_RSS").is_some();
    let long_cfg = cfg(warm + steps);
    let (_, long) = fine_tune(&m, &task, &d, &long_cfg, &mut |step, _, loss| {
        if trace {
            let rss = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let rss = rss.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("").to_owned();
            eprintln!("step {step}: loss {loss:.4} {rss}");
        }
    })?;
    let per_step = (long.wall_seconds - short.wall_seconds) / steps as f64;
    println!(
        "{}",
        json!({"model": model_path, "device": chosen.label, "output": output, "batch": batch, "steps": steps, "seconds_per_step": per_step, "loss": long.loss})
    );
    Ok(())
}

/// `graph.json` (nodes with their attributes, inputs, outputs, initializer names) and
/// `weights.npz` (initializers and Constant tensors).
fn export_graph(m: &Model, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let g = m.graph();
    let mut arrays: BTreeMap<String, TensorValue> = BTreeMap::new();
    let tensor = |t: &tamp_onnx::proto::TensorProto| -> Result<TensorValue> {
        use tamp_onnx::proto::tensor_proto::DataType as T;
        Ok(match data_type(t) {
            T::Float => TensorValue::F32(to_array(t)?),
            T::Int64 => TensorValue::I64(to_array(t)?),
            T::Int32 => TensorValue::I32(to_array(t)?),
            T::Int8 => TensorValue::I8(to_array(t)?),
            T::Uint8 => TensorValue::U8(to_array(t)?),
            T::Bool => TensorValue::Bool(to_array(t)?),
            other => bail!("tensor type {other:?}"),
        })
    };
    for t in &g.initializer {
        arrays.insert(t.name.clone().unwrap_or_default(), tensor(t)?);
    }
    let order = GraphView::new(g).topological_order()?;
    let mut nodes = Vec::new();
    for &i in &order {
        let n = &g.node[i];
        let mut attrs = serde_json::Map::new();
        for a in &n.attribute {
            let name = a.name.clone().unwrap_or_default();
            let v = match a.r#type() {
                AttributeType::Int => json!(a.i.unwrap_or_default()),
                AttributeType::Float => json!(a.f.unwrap_or_default()),
                AttributeType::Ints => json!(a.ints),
                AttributeType::Floats => json!(a.floats),
                AttributeType::String => json!(String::from_utf8_lossy(a.s.as_deref().unwrap_or_default())),
                AttributeType::Tensor => {
                    let key = format!("__attr_{i}_{name}");
                    if let Some(t) = &a.t {
                        arrays.insert(key.clone(), tensor(t)?);
                    }
                    json!({"tensor": key})
                }
                _ => continue,
            };
            attrs.insert(name, v);
        }
        nodes.push(json!({"op": n.op_type, "inputs": n.input, "outputs": n.output, "attrs": attrs}));
    }
    let inits: Vec<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let inputs: Vec<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !inits.contains(n)).collect();
    let outputs: Vec<&str> = g.output.iter().filter_map(|v| v.name.as_deref()).collect();
    let doc = json!({"nodes": nodes, "inputs": inputs, "outputs": outputs, "initializers": inits});
    std::fs::write(dir.join("graph.json"), serde_json::to_string(&doc)?)?;
    write_npz(&dir.join("weights.npz"), &arrays)?;
    Ok(())
}
