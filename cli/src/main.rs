//! `tamp`: the command-line entry point. Subcommands only parse arguments and print; the
//! work happens in the shared crates.

mod client;
mod compress;
mod eval;
mod export;
mod inspect;
mod local;
mod quantize;
mod report;
mod search;
mod serve;
mod ui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tamp", version, about = "Compress ONNX models and prove what it did")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's ops, parameters, size, opsets, inputs/outputs and what ONNX Runtime can't run.
    Inspect(inspect::Args),
    /// Evaluate a model on a dataset: task metrics, latency, throughput, memory, size.
    Eval(eval::Args),
    /// Run a recipe: candidates, accuracy-aware fallback, timing, the best artifact, a manifest.
    Compress(compress::Args),
    /// Mixed-precision search: per-layer float/int8/int4 under constraints, a measured Pareto
    /// front, the chosen artifact and its config as a recipe (resumes a killed run).
    Search(search::Args),
    /// Measure one search trial (what `tamp search --workers N` starts per trial).
    #[command(hide = true)]
    SearchTrial(search::TrialArgs),
    /// Write the HTML and PDF report of a `tamp compress` output folder.
    Report(report::Args),
    /// Run the local stack: API on 127.0.0.1, upload watcher, queue, stage workers (data in ./.tamp).
    Serve(serve::ServeArgs),
    /// Save the API URL and token for the client verbs (`--local .tamp` for tamp serve).
    Login(client::LoginArgs),
    /// Submit, list, inspect and cancel jobs on a Tamp API.
    Jobs(client::JobsArgs),
    /// The best artifact of a model for a runtime.
    Best(client::BestArgs),
    /// Download an artifact (or a model's best), checking its sha256.
    Download(client::DownloadArgs),
    /// Run one stage of one job (what `tamp serve` and the Batch container start).
    Worker(serve::WorkerArgs),
    /// One-shot int8 post-training quantization (static QDQ with calibration, or --dynamic).
    Quantize(quantize::Args),
    /// Write a model for another runtime (TFLite: fp32, dynamic-range int8, or int8 from
    /// Tamp's QDQ), or list the nodes that runtime cannot take.
    Export(export::Args),
    /// Print the API's OpenAPI 3.1 document (what the UI's and the Python client are generated from).
    Openapi,
}

/// Training allocates activation buffers of a different size every batch (sequence lengths
/// vary); glibc's heap kept the freed ones (RSS grew ~30 MB a step on MiniLM). mimalloc
/// reuses them at the same speed (docs/architecture.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TAMP_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Compress(a) => compress::run(&a),
        Command::Search(a) => search::run(&a),
        Command::SearchTrial(a) => search::trial(&a),
        Command::Quantize(a) => quantize::run(&a),
        Command::Export(a) => export::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Serve(a) => serve::serve(&a),
        Command::Openapi => {
            println!("{}", tamp_control::api::openapi_json());
            Ok(())
        }
        Command::Worker(a) => serve::worker(&a),
        Command::Login(a) => client::login(&a),
        Command::Jobs(a) => client::jobs(&a),
        Command::Best(a) => client::best(&a),
        Command::Download(a) => client::download(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, so scripts and users see the whole reason.
            let msg: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", msg.join(": "));
            ExitCode::FAILURE
        }
    }
}
