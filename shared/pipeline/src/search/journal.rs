//! The search's journal: a header naming what it belongs to, then one line per measured
//! (or pruned) config, appended and synced in the order the search asked; and the config
//! alphabet (`f`, `8`, `4` per group after the calibration method's digit).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tamp_domain::recipe::Precision;
use tamp_engine::EngineError;

use super::trial;
use crate::{Context, Result, io_err};

/// Bumped when a journal's meaning changes (an old journal is then set aside, not replayed).
pub(super) const JOURNAL_FORMAT: u32 = 1;

/// What a journal belongs to: a journal with another header is set aside, not replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) format: u32,
    pub(super) model_sha256: String,
    pub(super) data_sha256: String,
    pub(super) metric: String,
    pub(super) output: Option<String>,
    pub(super) seed: u64,
    pub(super) rows: usize,
    pub(super) latency_runs: usize,
    pub(super) threads: usize,
    pub(super) groups: Vec<Vec<String>>,
    pub(super) allowed: Vec<String>,
    pub(super) ptq: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The input model on the subset (what drops are measured from).
    Reference,
    /// Metric only: one group changed from the starting config.
    Probe,
    /// Metric, P50 and size.
    Trial,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub n: usize,
    pub kind: Kind,
    /// The calibration method's index, then one character per group: `f` float, `8` int8,
    /// `4` int4.
    pub config: String,
    pub metric: f64,
    pub drop_pct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms_p50: Option<f64>,
    pub size_bytes: u64,
    pub sha256: String,
    /// Why it was not measured (a constraint it cannot meet, known before measuring).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<String>,
    pub seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    header: Header,
}

pub(super) fn code(p: Precision) -> char {
    match p {
        Precision::Float => 'f',
        Precision::Int8 => '8',
        Precision::Int4 => '4',
    }
}

pub(super) fn precision(c: u8) -> Precision {
    match c {
        b'8' => Precision::Int8,
        b'4' => Precision::Int4,
        _ => Precision::Float,
    }
}

/// Reads a journal written for the same header (dropping a line cut short by a kill), or
/// sets a foreign one aside and starts a new one.
pub(super) fn open_journal(path: &Path, header: &Header, cx: &mut Context<'_, '_>) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let same = lines.next().and_then(|l| serde_json::from_str::<HeaderLine>(l).ok()).is_some_and(|h| h.header == *header);
    if same {
        let mut records = Vec::new();
        let mut good = text.lines().next().map_or(0, |l| l.len() + 1);
        for line in lines {
            match serde_json::from_str::<Record>(line) {
                Ok(r) if text[good..].starts_with(line) && text.len() > good + line.len() => {
                    records.push(r);
                    good += line.len() + 1;
                }
                _ => break,
            }
        }
        if good < text.len() {
            // A line cut short by a kill: cut it off so appends start on a fresh line.
            let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
            f.set_len(good as u64).map_err(io_err(path))?;
        }
        cx.obs.begin("search journal", 0);
        cx.obs.end(&format!("resuming from {}: {} record(s) already measured", path.display(), records.len()));
        return Ok(records);
    }
    if !text.is_empty() {
        let aside = path.with_extension(format!("jsonl.old-{}", std::process::id()));
        std::fs::rename(path, &aside).map_err(io_err(path))?;
        cx.obs.begin("search journal", 0);
        cx.obs.end(&format!("{} was for another model, data or settings: set aside as {}", path.display(), aside.display()));
    }
    let line = serde_json::to_string(&HeaderLine { header: header.clone() }).map_err(|e| EngineError::Config(e.to_string()))?;
    trial::write_atomic(path, format!("{line}\n").as_bytes())?;
    Ok(Vec::new())
}
