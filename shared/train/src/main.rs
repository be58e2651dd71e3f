//! `tamp-train-reference`: trains the Fashion-MNIST reference CNN (seeded) and writes
//! `model.onnx`, `calib.npz` (seeded sample of the training set), `train.npz` (all 60k
//! labelled training images, for fine-tuning) and `eval.npz` (the full labelled test set)
//! into an output folder. `make models` runs it once per source hash. `--sets-only` writes
//! the datasets into an existing folder without training.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use tamp_onnx::SaveOptions;

use ndarray::{ArrayD, IxDyn};
use tamp_data::write_npz;
use tamp_onnx::TensorValue;
use tamp_train::{fmnist, resnet::ResNet};

struct Args {
    data: PathBuf,
    out: PathBuf,
    epochs: usize,
    width: usize,
    seed: u64,
    train_rows: Option<usize>,
    calib_rows: usize,
    sets_only: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args { data: PathBuf::new(), out: PathBuf::new(), epochs: 2, width: 16, seed: 7, train_rows: None, calib_rows: 1024, sets_only: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => a.data = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--epochs" => a.epochs = val()?.parse()?,
            "--width" => a.width = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--train-rows" => a.train_rows = Some(val()?.parse()?),
            "--calib-rows" => a.calib_rows = val()?.parse()?,
            "--sets-only" => a.sets_only = true,
            other => bail!("unknown flag {other}; usage: tamp-train-reference --data DIR --out DIR [--epochs N] [--width W] [--seed S] [--train-rows N]"),
        }
    }
    if a.data.as_os_str().is_empty() || a.out.as_os_str().is_empty() {
        bail!("usage: tamp-train-reference --data DIR --out DIR");
    }
    Ok(a)
}

fn accuracy(net: &ResNet, split: &fmnist::Split, dev: &Device) -> Result<f64> {
    let mut correct = 0usize;
    let rows: Vec<usize> = (0..split.rows).collect();
    for chunk in rows.chunks(128) {
        let x = Tensor::from_vec(fmnist::normalised(split, chunk), (chunk.len(), 1, 28, 28), dev)?;
        let pred = net.forward(&x, false)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += chunk.iter().zip(pred).filter(|&(&r, p)| u32::from(split.labels[r]) == p).count();
    }
    Ok(100.0 * correct as f64 / split.rows as f64)
}

/// candle's CPU device cannot be seeded, so every weight is re-drawn from a seeded RNG:
/// He-normal for conv/linear weights (fan-in), zeros for linear biases; batch-norm
/// parameters and statistics keep their deterministic defaults.
fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        if name.contains(".bn.") {
            continue;
        }
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt();
            (0..n)
                .map(|_| {
                    // Box-Muller from two uniforms.
                    let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
                    (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                })
                .collect()
        } else {
            vec![0.0; n]
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    Ok(())
}

/// Writes rows of a split as a dataset: `input` [N,1,28,28] float32 and int64 `labels`.
fn write_set(path: &std::path::Path, split: &fmnist::Split, rows: &[usize]) -> Result<()> {
    let x = ArrayD::from_shape_vec(IxDyn(&[rows.len(), 1, 28, 28]), fmnist::normalised(split, rows))?;
    let y = ArrayD::from_shape_vec(IxDyn(&[rows.len()]), rows.iter().map(|&r| i64::from(split.labels[r])).collect())?;
    let arrays = BTreeMap::from([("input".to_owned(), TensorValue::F32(x)), ("labels".to_owned(), TensorValue::I64(y))]);
    Ok(write_npz(path, &arrays)?)
}

/// `eval.npz` (the test split), `calib.npz` (a seeded sample of the training split, never
/// the test split) and `train.npz` (the whole training split, uncompressed so it streams).
fn write_sets(args: &Args, train: &fmnist::Split, test: &fmnist::Split) -> Result<()> {
    let test_rows: Vec<usize> = (0..test.rows).collect();
    write_set(&args.out.join("eval.npz"), test, &test_rows)?;
    let mut calib_rows: Vec<usize> = (0..train.rows).collect();
    calib_rows.shuffle(&mut ChaCha8Rng::seed_from_u64(args.seed + 1));
    calib_rows.truncate(args.calib_rows);
    write_set(&args.out.join("calib.npz"), train, &calib_rows)?;
    let all: Vec<usize> = (0..train.rows).collect();
    write_set(&args.out.join("train.npz"), train, &all)
}

fn main() -> Result<()> {
    let args = parse()?;
    let dev = Device::Cpu;
    let train = fmnist::load(&args.data, "train")?;
    let test = fmnist::load(&args.data, "t10k")?;
    if args.sets_only {
        std::fs::create_dir_all(&args.out)?;
        return write_sets(&args, &train, &test);
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = ResNet::new(args.width, 10, vb)?;
    seeded_init(&varmap, args.seed)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 3e-3, weight_decay: 1e-4, ..Default::default() })?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut order: Vec<usize> = (0..train.rows).collect();
    let n_train = args.train_rows.unwrap_or(train.rows).min(train.rows);
    let batch = 128;
    let steps_per_epoch = n_train.div_ceil(batch);
    let total_steps = steps_per_epoch * args.epochs;
    let started = Instant::now();
    let mut step = 0;
    for epoch in 0..args.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for chunk in order[..n_train].chunks(batch) {
            // Cosine learning-rate decay over the whole run.
            let progress = step as f64 / total_steps as f64;
            opt.set_learning_rate(3e-3 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            let x = Tensor::from_vec(fmnist::normalised(&train, chunk), (chunk.len(), 1, 28, 28), &dev)?;
            let y = Tensor::from_vec(chunk.iter().map(|&r| u32::from(train.labels[r])).collect::<Vec<_>>(), chunk.len(), &dev)?;
            let loss = candle_nn::loss::cross_entropy(&net.forward(&x, true)?, &y)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()?;
            step += 1;
        }
        eprintln!("epoch {}: loss {:.4} ({:.0}s)", epoch + 1, loss_sum / steps_per_epoch as f32, started.elapsed().as_secs_f64());
    }
    let acc = accuracy(&net, &test, &dev)?;
    eprintln!("test top-1 (candle): {acc:.2}%");

    std::fs::create_dir_all(&args.out)?;
    let model = net.export(17)?;
    model.save(args.out.join("model.onnx"), &SaveOptions::default())?;
    write_sets(&args, &train, &test)?;
    let meta = serde_json::json!({
        "model": "fmnist-resnet8", "width": args.width, "epochs": args.epochs, "seed": args.seed,
        "train_rows": n_train, "candle_test_top1": acc, "train_seconds": started.elapsed().as_secs_f64(),
        "normalisation": {"mean": fmnist::MEAN, "std": fmnist::STD},
    });
    std::fs::write(args.out.join("train.json"), serde_json::to_string_pretty(&meta)? + "\n")?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
