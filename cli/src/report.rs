//! `tamp report OUT_DIR`: the HTML and PDF report of a `tamp compress` output folder
//! (`report.html`, `report.pdf`), also written by `tamp compress` itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tamp_report::Sources;

#[derive(clap::Args)]
pub struct Args {
    /// The folder `tamp compress --out` wrote.
    dir: PathBuf,
    /// Peak requests per second to project the cost for (overrides the recipe's `report.qps`).
    #[arg(long)]
    qps: Option<f64>,
    /// Instance type to project the cost on (overrides `report.instance`).
    #[arg(long)]
    instance: Option<String>,
}

/// Renders the report of `dir` into it; returns the recommendation's label.
pub fn write(dir: &Path, mut sources: Sources, reproduce: Option<String>) -> Result<String> {
    sources.reproduce = reproduce.or(sources.reproduce);
    let rendered = tamp_report::render(sources).with_context(|| format!("the report of {}", dir.display()))?;
    for (name, bytes) in [("report.html", rendered.html.as_bytes()), ("report.pdf", rendered.pdf.as_slice())] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rendered.summary["recommendation"].as_str().unwrap_or("unknown").replace('_', " "))
}

pub fn run(args: &Args) -> Result<()> {
    let mut sources = Sources::from_dir(&args.dir)?;
    if args.qps.is_some() || args.instance.is_some() {
        let mut recipe = sources.manifest.as_ref().map(|m| m.recipe.clone()).context("--qps/--instance need the run's manifest.json (its recipe)")?;
        recipe.report.qps = args.qps.unwrap_or(recipe.report.qps);
        recipe.report.instance = args.instance.clone().unwrap_or(recipe.report.instance);
        if let Some((k, m)) = recipe.report.problem() {
            anyhow::bail!("--{k}: {m}");
        }
        sources.recipe = Some(recipe);
    }
    let verdict = write(&args.dir, sources, None)?;
    println!("recommendation: {verdict}");
    println!("wrote {0}/report.html, {0}/report.pdf", args.dir.display());
    Ok(())
}
