//! The Batch container's entry point: `tamp-batch-worker worker --job J --stage S --attempt A`
//! (the command `AwsBatchRunner` submits), with S3 and DynamoDB from the environment.
//! Exit 0 success, 3 bad input (not retried), anything else retryable.

use anyhow::Result;
use clap::Parser;
use tamp_ports::StageRun;

#[derive(Parser)]
#[command(name = "tamp-batch-worker", version, about = "Runs one stage of one Tamp job (the AWS Batch container)")]
enum Cli {
    /// Run stage S (attempt A) of job J.
    Worker {
        #[arg(long)]
        job: String,
        #[arg(long)]
        stage: usize,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().json().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let Cli::Worker { job, stage, attempt } = Cli::parse();
    let run = StageRun { job, stage, attempt };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match rt.block_on(tamp_worker::aws::run(&run)) {
        Ok(()) => Ok(()),
        Err(f) => {
            eprintln!("error: {}", f.message());
            std::process::exit(f.exit_code());
        }
    }
}
