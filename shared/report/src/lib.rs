//! Tamp's report as a document a product manager decides from: one self-contained HTML file
//! and a PDF with the same content, made in Rust with no browser (the report step runs as a
//! Lambda). The content is built once ([`model::Report`]: recommendation, risk flags, cost
//! projection, analysis) and laid out as blocks ([`doc`]) that [`html`] and [`pdf`] render.
//! Charts are drawn by `plotters` as SVG; the PDF is written by `krilla`, with the SVG
//! charts converted by `krilla-svg` and text set in DejaVu Sans (the `dejavu` crate), so the
//! binary needs no system fonts.

pub mod charts;
pub mod cost;
pub mod doc;
pub mod html;
pub mod model;
pub mod pdf;

pub use cost::{CostProjection, PriceTable};
pub use model::{EventLine, Flag, FrontPoint, Proxy, Recommendation, Report, SearchSummary, Severity, Sources};

/// Errors of the report step.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report needs {0}")]
    Missing(String),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("writing the PDF: {0}")]
    Pdf(String),
}

pub use tamp_domain::results::higher_is_better;

/// Relative drop of `value` from `baseline`, in percent (negative: improved).
pub fn drop_pct(baseline: f64, value: f64, metric: &str) -> f64 {
    tamp_domain::results::metric_drop_pct(metric, baseline, value)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM` (UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

/// The rendered report.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub html: String,
    pub pdf: Vec<u8>,
    /// The content as JSON (recommendation, flags, rows, cost), for `report.json`.
    pub summary: serde_json::Value,
}

/// Builds and renders the report.
pub fn render(sources: Sources) -> Result<Rendered, ReportError> {
    let settings = sources.recipe.as_ref().or(sources.manifest.as_ref().map(|m| &m.recipe)).map(|r| r.report.clone()).unwrap_or_default();
    let prices = PriceTable::defaults().with(&settings);
    let report = Report::build(sources, &prices)?;
    let blocks = doc::blocks(&report);
    Ok(Rendered { html: html::render(&blocks), pdf: pdf::render(&blocks)?, summary: serde_json::to_value(&report).unwrap_or_default() })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn dates_render_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_796_212_800), "2026-12-02 12:00");
    }

    #[test]
    fn the_default_price_table_parses_and_states_its_source() {
        let t = PriceTable::defaults();
        assert!(t.instances.contains_key("c7i.xlarge") && !t.source.is_empty() && t.date.starts_with("20"));
    }
}

#[cfg(test)]
mod tests;
