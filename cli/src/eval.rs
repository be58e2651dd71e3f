//! `tamp eval`: a model's baseline on a dataset, as a table or JSON, optionally written
//! to `baseline.json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use tamp_engine::Dataset;
use tamp_engine::eval::{EvalConfig, EvalReport, evaluate};
use tamp_engine::runtime::{OptimizationLevel, SessionConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx file.
    model: PathBuf,
    /// The .npz dataset (arrays named after the model inputs, optional `labels`).
    #[arg(long)]
    data: PathBuf,
    /// Metrics to compute (repeatable): top1, top5, f1_macro, f1_micro, roc_auc, cosine, mse, mae.
    #[arg(long = "metric")]
    metrics: Vec<String>,
    /// The output the metrics read (default: the first).
    #[arg(long)]
    output: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Evaluate a seeded random sample of this many rows.
    #[arg(long)]
    samples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, value_enum, default_value = "all")]
    optimization: Opt,
    /// ONNX Runtime execution provider: `cpu`, or `cuda` / `cuda:<device>` (needs the GPU
    /// build of ONNX Runtime: ORT_DYLIB_PATH to the onnxruntime-gpu wheel's library).
    #[arg(long, default_value = "cpu")]
    provider: String,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Timed single-sample runs for the latency percentiles.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Batch sizes for throughput, comma-separated ("" skips throughput).
    #[arg(long, default_value = "1,32")]
    throughput: String,
    /// Write the report to this file (the baseline record).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Write the metric output of every evaluated row to this .npy file.
    #[arg(long)]
    dump_outputs: Option<PathBuf>,
    /// Only time the model against this one, interleaved as `tamp compress` judges speed
    /// (15 rounds of single-row runs, which goes first alternating), and print the speed-up
    /// (> 1: the model is faster) with its distribution-free interval; nothing is evaluated.
    #[arg(long)]
    against: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Opt {
    Disable,
    Basic,
    Extended,
    All,
}

pub fn run(args: &Args) -> Result<()> {
    let throughput_batches = args
        .throughput
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().ok().filter(|&b| b > 0).with_context(|| format!("--throughput: '{s}' is not a positive batch size")))
        .collect::<Result<Vec<_>>>()?;
    let data = Dataset::load(&args.data)?;
    let cfg = EvalConfig {
        metrics: args.metrics.clone(),
        output: args.output.clone(),
        batch_size: args.batch_size,
        samples: args.samples,
        seed: args.seed,
        latency: tamp_engine::perf::LatencyConfig { warmup: args.warmup, runs: args.runs },
        throughput_batches,
        session: SessionConfig {
            intra_threads: args.threads,
            optimization: match args.optimization {
                Opt::Disable => OptimizationLevel::Disable,
                Opt::Basic => OptimizationLevel::Basic,
                Opt::Extended => OptimizationLevel::Extended,
                Opt::All => OptimizationLevel::All,
            },
            execution_providers: provider(&args.provider)?,
            ..SessionConfig::default()
        },
        ..EvalConfig::default()
    };
    if let Some(other) = &args.against {
        let mut base = tamp_engine::Session::from_file(other, &cfg.session)?;
        let mut cand = tamp_engine::Session::from_file(&args.model, &cfg.session)?;
        let s = tamp_engine::perf::compare(&mut base, &mut cand, &data, 15, (args.runs / 10).max(5))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            println!(
                "{} against {}: {:.3}x ({:.1} % interval {:.3}-{:.3}x; {} rounds of {} runs)",
                args.model.display(),
                other.display(),
                s.speedup,
                s.confidence * 100.0,
                s.low,
                s.high,
                s.rounds,
                s.runs_per_round
            );
        }
        return Ok(());
    }
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} rows ({per_sec}, eta {eta})")?.progress_chars("=> "));
    bar.set_message("evaluating");
    let mut outputs = Vec::new();
    let keep = args.dump_outputs.as_ref().map(|_| &mut outputs);
    let report = evaluate(&args.model, &data, &cfg, keep, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if let Some(path) = &args.dump_outputs {
        write_npy(path, &outputs).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.baseline {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        if let Some(path) = &args.baseline {
            println!("baseline written to {}", path.display());
        }
    }
    Ok(())
}

fn write_npy(path: &std::path::Path, batches: &[ndarray::Array2<f32>]) -> Result<()> {
    use npyz::WriterBuilder;
    let cols = batches.first().map_or(0, |b| b.ncols());
    let rows: usize = batches.iter().map(|b| b.nrows()).sum();
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&[rows as u64, cols as u64]).writer(file).begin_nd()?;
    for b in batches {
        w.extend(b.iter().copied())?;
    }
    w.finish()?;
    Ok(())
}

/// "1.2 MiB"-style sizes.
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.2} {}", units[u]) }
}

fn print_table(r: &EvalReport) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["baseline", &r.model.path.display().to_string()]);
    for (name, v) in &r.metrics {
        let about = tamp_engine::metrics::lookup(name).map(|d| d.about).unwrap_or("");
        t.add_row([format!("{name} ({about})"), format!("{v:.4}")]);
    }
    t.add_row(["evaluated rows".to_owned(), format!("{} of {}", r.dataset.evaluated_rows, r.dataset.rows)]);
    t.add_row(["execution provider".to_owned(), r.provider.clone()]);
    t.add_row(["latency P50 / P95 / P99 (batch 1)".to_owned(), format!("{:.3} / {:.3} / {:.3} ms", r.latency.p50_ms, r.latency.p95_ms, r.latency.p99_ms)]);
    for tp in &r.throughput {
        let v = match (tp.samples_per_s, &tp.skipped) {
            (Some(s), _) => match tp.batch_p50_ms {
                Some(p50) => format!("{s:.1} samples/s (P50 {p50:.3} ms per batch)"),
                None => format!("{s:.1} samples/s"),
            },
            (None, Some(why)) => format!("skipped: {why}"),
            (None, None) => "-".into(),
        };
        t.add_row([format!("throughput (batch {})", tp.batch_size), v]);
    }
    t.add_row(["size on disk".to_owned(), human_bytes(r.model.size_bytes)]);
    t.add_row(["parameters".to_owned(), r.model.params.to_string()]);
    t.add_row(["peak memory (session)".to_owned(), format!("{:.1} MiB (process peak {:.1} MiB)", r.memory.session_peak_mb, r.memory.peak_rss_mb)]);
    t.add_row(["ONNX Runtime".to_owned(), r.onnxruntime.version.clone()]);
    t.add_row(["CPU".to_owned(), format!("{} ({} cores; {})", r.cpu.model, r.cpu.logical_cores, r.cpu.features.join(" "))]);
    println!("{t}");
}

/// `--provider`: `cpu`, `cuda` or `cuda:<device>`.
fn provider(s: &str) -> Result<Vec<tamp_engine::runtime::ExecutionProvider>> {
    use tamp_engine::runtime::ExecutionProvider;
    Ok(match s.split_once(':').map_or((s, None), |(k, d)| (k, Some(d))) {
        ("cpu", None) => vec![],
        ("cuda", None) => vec![ExecutionProvider::Cuda { device_id: 0 }],
        ("cuda", Some(d)) => vec![ExecutionProvider::Cuda { device_id: d.parse().with_context(|| format!("--provider {s}: '{d}' is not a device number"))? }],
        _ => anyhow::bail!("--provider {s}: use cpu, cuda or cuda:<device>"),
    })
}
