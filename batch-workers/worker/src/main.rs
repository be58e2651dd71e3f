//! The Batch container's entry point: `tamp-batch-worker worker --job J --stage S --attempt A`
//! (the command `AwsBatchRunner` submits), `export --job J --runtime R` (the export
//! function's large conversions), with S3 and DynamoDB from the environment.
//! The arguments and the exit contract are `tamp_worker`'s, shared with `tamp worker`.

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(name = "tamp-batch-worker", version, about = "Runs one stage of one Tamp job (the AWS Batch container)")]
enum Cli {
    /// Run stage S (attempt A) of job J.
    Worker(tamp_worker::RunArgs),
    /// Convert job J's final artifact for runtime R (submitted by the export function).
    Export {
        #[arg(long)]
        job: String,
        #[arg(long)]
        runtime: String,
    },
    /// Measure one search trial (submitted by a search stage's container).
    SearchTrial {
        #[arg(long)]
        spec_key: String,
    },
}

/// Training allocates activation buffers of a different size every batch (sequence lengths
/// vary); glibc's heap kept the freed ones (RSS grew ~30 MB a step on MiniLM). mimalloc
/// reuses them at the same speed (docs/architecture.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    tracing_subscriber::fmt().json().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    // Multi-thread: the stage's pipeline runs under `block_in_place` and uploads the search
    // journal from there while the runtime keeps driving the SDK's connections.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match Cli::parse() {
        Cli::Worker(args) => tamp_worker::finish(rt.block_on(tamp_worker::aws::run(&args.run()))),
        Cli::Export { job, runtime } => tamp_worker::finish(rt.block_on(tamp_worker::aws::export(&job, &runtime))),
        Cli::SearchTrial { spec_key } => tamp_worker::finish(rt.block_on(tamp_worker::aws::trial(&spec_key))),
    }
    Ok(())
}
