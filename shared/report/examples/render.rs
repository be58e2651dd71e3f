//! Renders the report of a `tamp compress` output folder, timed: what the report Lambda does
//! after its S3 reads (`cargo run --release -p tamp-report --example render -- DIR`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: render DIR")?);
    let t = std::time::Instant::now();
    let sources = tamp_report::Sources::from_dir(&dir)?;
    let read = t.elapsed();
    let r = tamp_report::render(sources)?;
    let total = t.elapsed();
    std::fs::write(dir.join("report.html"), &r.html)?;
    std::fs::write(dir.join("report.pdf"), &r.pdf)?;
    println!(
        "{}: read {:.1} ms, built and rendered in {:.1} ms; HTML {} bytes, PDF {} bytes; {}",
        dir.display(),
        read.as_secs_f64() * 1e3,
        (total - read).as_secs_f64() * 1e3,
        r.html.len(),
        r.pdf.len(),
        r.summary["recommendation"]
    );
    Ok(())
}
