//! The report as a list of blocks (headings, paragraphs, tables, charts, code), the one
//! description both renderers lay out, so the HTML and the PDF say the same things.

use crate::charts::{self, Chart};
use crate::model::{Recommendation, Report, Row, Severity};

/// One piece of the document.
#[derive(Debug, Clone)]
pub enum Block {
    Title(String, String),
    Heading(String),
    Verdict(Recommendation, String),
    Flag(Severity, String),
    Para(String),
    Table { head: Vec<String>, rows: Vec<Vec<String>>, highlight: Option<usize> },
    Chart(Chart),
    Code(String),
}

fn f(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "—".into() }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |x| f(x, digits))
}

/// Bytes as KiB/MiB.
pub fn size(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 { format!("{:.2} MiB", b / 1024.0 / 1024.0) } else { format!("{:.1} KiB", b / 1024.0) }
}

fn macs(m: Option<u64>) -> String {
    m.map_or_else(|| "—".into(), |m| if m >= 1_000_000 { format!("{:.1} M", m as f64 / 1e6) } else { format!("{:.1} k", m as f64 / 1e3) })
}

fn row_cells(r: &Row) -> Vec<String> {
    vec![
        if r.chosen { format!("{} ★", r.id) } else { r.id.clone() },
        r.technique.clone(),
        f(r.metric, 4),
        if r.id == "baseline" { "—".into() } else { format!("{:+.2} %", -r.drop_pct) },
        f(r.p50_ms, 3),
        f(r.p95_ms, 3),
        opt(r.p99_ms, 3),
        opt(r.throughput, 0),
        opt(r.peak_memory_mb, 1),
        size(r.size_bytes),
        macs(r.macs),
        format!("{:.2}×", r.ratio),
        format!("{:.2}×", r.speedup),
    ]
}

/// The document, in reading order.
pub fn blocks(r: &Report) -> Vec<Block> {
    let mut b = Vec::new();
    let when = r.manifest.as_ref().map(|m| format!("made {} UTC by tamp {}", crate::utc(m.created_unix), m.tamp_version)).unwrap_or_default();
    b.push(Block::Title(format!("Compression report: {}", r.title), when));
    b.push(Block::Heading("Summary".into()));
    let ch = r.chosen();
    let headline = match ch {
        Some(c) => format!(
            "Chosen: {} — {} {:.4} vs {:.4} ({:+.2} %), {:.2}× smaller, P50 {:.3} ms vs {:.3} ms ({:.2}×). {}",
            c.id, r.metric, c.metric, r.baseline.metric, -c.drop_pct, c.ratio, c.p50_ms, r.baseline.p50_ms, c.speedup, r.reason
        ),
        None => "No candidate was chosen.".into(),
    };
    b.push(Block::Verdict(r.recommendation, headline));
    if r.flags.is_empty() {
        b.push(Block::Para("No risk flags: within the metric budget, no cohort or layer beyond its threshold, calibration representative, not slower.".into()));
    }
    for fl in &r.flags {
        b.push(Block::Flag(fl.severity, format!("{}: {}", fl.kind.replace('_', " "), fl.message)));
    }
    b.push(Block::Heading("Baseline vs candidates".into()));
    b.push(Block::Para(format!(
        "Latency: single-row runs at batch 1; throughput: samples/s at batch 32; peak MiB: resident memory the ONNX Runtime session added while loading and running the model (baseline and chosen only). Budget: {} may drop at most {:.2} %. ★ marks the chosen candidate.",
        r.metric, r.max_drop_pct
    )));
    let head = ["model", "technique", &r.metric, "Δ metric", "P50 ms", "P95 ms", "P99 ms", "samples/s", "peak MiB", "size", "MACs", "smaller", "speed-up"];
    let mut rows = vec![row_cells(&r.baseline)];
    rows.extend(r.candidates.iter().map(row_cells));
    let highlight = r.candidates.iter().position(|c| c.chosen).map(|i| i + 1);
    b.push(Block::Table { head: head.iter().map(|s| (*s).to_owned()).collect(), rows, highlight });
    let charts = charts::all(r);
    let (tradeoffs, rest): (Vec<Chart>, Vec<Chart>) = charts.into_iter().partition(|c| c.title.ends_with(" vs size") || c.title.ends_with(" vs latency"));
    b.extend(tradeoffs.into_iter().map(Block::Chart));
    search(r, &mut b);
    early_exits(r, &mut b);
    cost(r, &mut b);
    analysis(r, &mut b, rest);
    lineage(r, &mut b);
    b
}

/// Each cascade's accuracy against average latency over thresholds, and the cascade file's
/// own row-by-row timing.
fn early_exits(r: &Report, b: &mut Vec<Block>) {
    for (id, d) in &r.early_exits {
        b.push(Block::Heading(format!("Early exits: {id}")));
        let heads: Vec<String> = d.exits.iter().zip(&d.exit_top1).map(|(e, t)| format!("after {e}: {} {}", r.metric, f(*t, 2))).collect();
        let timed = d.measured.as_ref().map_or_else(String::new, |t| {
            format!(
                " The cascade file itself, run at batch 1 on {} evaluation rows (each row takes the path its confidence picks; {} interleaved rounds, the median): {} ms a row against the model's {} ms, {:.3}× (the table's latencies are estimates from each path's P50).",
                t.rows,
                t.rounds,
                f(t.average_latency_ms, 4),
                f(t.baseline_average_latency_ms, 4),
                t.latency_ratio
            )
        });
        b.push(Block::Para(format!(
            "Heads: {} (the full model: {}). A row is answered by the first head whose top softmax probability reaches the threshold; {}. Chosen threshold: {} (the fastest within the metric budget).{timed}",
            heads.join("; "),
            d.exit_top1.last().map_or_else(|| "—".into(), |v| f(*v, 2)),
            d.batching,
            d.threshold
        )));
        let rows = d
            .curve
            .iter()
            .map(|p| {
                vec![
                    format!("{}", p.threshold),
                    f(p.top1, 2),
                    p.answered.iter().map(|a| format!("{:.1} %", 100.0 * a)).collect::<Vec<_>>().join(" / "),
                    f(p.average_latency_ms, 4),
                    format!("{:.3}×", p.latency_ratio),
                    if p.meets_constraint { "yes".into() } else { "no".into() },
                ]
            })
            .collect();
        let highlight = d.curve.iter().position(|p| p.threshold == d.threshold);
        b.push(Block::Table {
            head: ["threshold", r.metric.as_str(), "answered by each head / the full model", "average ms", "× the model", "within budget"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            rows,
            highlight,
        });
    }
}

/// A search stage's front, and how well its proxy ranked the measured trials.
fn search(r: &Report, b: &mut Vec<Block>) {
    let Some(s) = &r.search else { return };
    b.push(Block::Heading("Mixed-precision search".into()));
    let proxy = s.proxy.as_ref().map_or_else(
        || "No proxy was fitted (the sensitivity probes did not finish).".to_owned(),
        |p| match p.spearman {
            Some(rho) => format!("Proxy: {}; Spearman rank correlation with the measured drops {rho:.2} over {} trials.", p.name, p.trials),
            None => format!("Proxy: {}; too few distinct trials ({}) for a rank correlation.", p.name, p.trials),
        },
    );
    b.push(Block::Para(format!(
        "{} trials measured ({} metric-only sensitivity probes), {} on a seeded subset of {} rows; the front's points were then confirmed on the whole evaluation set (the table above). {proxy} Config: the calibration method's index, then per layer group f (float), 8 (int8) or 4 (int4).",
        s.trials, s.probes, r.metric, s.subset_rows
    )));
    let rows = s
        .front
        .iter()
        .map(|p| {
            vec![
                p.trial.to_string(),
                p.config.clone(),
                f(p.metric, 4),
                format!("{:+.2} %", -p.drop_pct),
                opt(p.latency_ms_p50, 3),
                size(p.size_bytes),
                format!("{:.2}×", p.compression_ratio),
                if p.meets_constraints { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    b.push(Block::Table {
        head: ["trial", "config", &format!("{} (subset)", r.metric), "Δ metric", "P50 ms", "size", "smaller", "meets constraints"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        rows,
        highlight: None,
    });
}

fn cost(r: &Report, b: &mut Vec<Block>) {
    b.push(Block::Heading("Cost projection".into()));
    let Some(c) = &r.cost else {
        b.push(Block::Para("No projection: the chosen candidate has no measured throughput or latency, or the instance has no price.".into()));
        return;
    };
    b.push(Block::Para(format!(
        "Serving {} requests/s on {} ({} vCPU, ${}/h; {}, {}), planned at {:.0} % of measured capacity, {} h/month. One model replica per {} vCPU(s).",
        c.qps,
        c.instance,
        c.vcpus,
        c.usd_per_hour,
        c.price_source,
        c.price_date,
        c.target_utilization * 100.0,
        c.hours_per_month,
        c.vcpus / c.before.replicas_per_instance.max(1)
    )));
    let side = |name: &str, s: &crate::cost::Side| {
        vec![
            name.to_owned(),
            format!("{:.1}", s.replica_samples_per_s),
            s.basis.clone(),
            format!("{:.1}", s.instance_capacity_qps),
            s.instances.to_string(),
            format!("${:.2}", s.monthly_usd),
        ]
    };
    b.push(Block::Table {
        head: ["model", "samples/s per replica", "measured as", "capacity per instance (req/s)", "instances", "per month"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        rows: vec![side("baseline", &c.before), side("chosen", &c.after)],
        highlight: Some(1),
    });
    b.push(Block::Para(format!("Monthly saving: ${:.2} ({:.1} %).", c.monthly_saving_usd, c.saving_pct)));
}

fn analysis(r: &Report, b: &mut Vec<Block>, mut charts: Vec<Chart>) {
    let mut take = |prefix: &str| charts.iter().position(|c| c.title.starts_with(prefix)).map(|i| Block::Chart(charts.remove(i)));
    let Some(a) = &r.analysis else {
        b.push(Block::Heading("Analysis".into()));
        b.push(Block::Para(
            "No analysis was recorded for this run (analysis.json is missing): robustness, cohorts, calibration coverage and per-layer error are not shown."
                .into(),
        ));
        b.extend(take("Per-layer sensitivity"));
        return;
    };
    b.push(Block::Heading("Latency distribution".into()));
    b.push(Block::Para(format!(
        "{} timed single-row runs per model. Baseline P50/P95/P99 {:.3}/{:.3}/{:.3} ms; chosen {:.3}/{:.3}/{:.3} ms. Peak memory the session added: {:.1} → {:.1} MiB.",
        a.chosen.latency_samples_ms.len(),
        a.baseline.latency_ms_p50,
        a.baseline.latency_ms_p95,
        a.baseline.latency_ms_p99,
        a.chosen.latency_ms_p50,
        a.chosen.latency_ms_p95,
        a.chosen.latency_ms_p99,
        a.baseline.peak_memory_mb,
        a.chosen.peak_memory_mb
    )));
    b.extend(take("Latency distribution"));
    b.push(Block::Heading("Robustness".into()));
    if a.robustness.is_empty() {
        b.push(Block::Para("Robustness analysis was not run (report.robustness: false, or no input it can shift).".into()));
    } else {
        b.push(Block::Para(format!(
            "{} under seeded input shifts, baseline and chosen model on the same perturbed rows ({} rows, seed {}).",
            a.metric, a.robustness[0].rows, a.robustness[0].seed
        )));
        let rows = a
            .robustness
            .iter()
            .map(|s| {
                vec![
                    s.shift.replace('_', " "),
                    f(s.level, 3),
                    f(s.baseline, 4),
                    f(s.chosen, 4),
                    format!("{:+.2} %", -crate::drop_pct(s.baseline, s.chosen, &a.metric)),
                ]
            })
            .collect();
        b.push(Block::Table {
            head: vec!["shift".into(), "level".into(), "baseline".into(), "chosen".into(), "chosen vs baseline".into()],
            rows,
            highlight: None,
        });
        b.extend(take("Robustness"));
    }
    if !a.outliers.is_empty() {
        let rows = a
            .outliers
            .iter()
            .map(|o| {
                vec![o.input.clone(), if o.baseline_finite { "finite" } else { "NaN/Inf" }.into(), if o.chosen_finite { "finite" } else { "NaN/Inf" }.into()]
            })
            .collect();
        b.push(Block::Table { head: vec!["outlier input".into(), "baseline outputs".into(), "chosen outputs".into()], rows, highlight: None });
    }
    b.push(Block::Heading("Cohorts".into()));
    if a.cohorts.is_empty() {
        b.push(Block::Para(
            "The evaluation set has no `cohort` array, so no per-cohort metrics. Add an integer `cohort` array (one id per row) to see them.".into(),
        ));
    } else {
        b.push(Block::Para(format!(
            "Per-cohort {} from the evaluation set's `cohort` array; threshold {:.2} % drop per cohort.",
            a.metric, r.cohort_max_drop_pct
        )));
        let rows = a
            .cohorts
            .iter()
            .map(|c| {
                let mark = if c.drop_pct > r.cohort_max_drop_pct { " ⚠" } else { "" };
                vec![c.cohort.to_string(), c.rows.to_string(), f(c.baseline, 4), f(c.chosen, 4), format!("{:+.2} %{mark}", -c.drop_pct)]
            })
            .collect();
        b.push(Block::Table { head: vec!["cohort".into(), "rows".into(), "baseline".into(), "chosen".into(), "Δ".into()], rows, highlight: None });
    }
    b.push(Block::Heading("Calibration representativeness".into()));
    match &a.calibration {
        None => b.push(Block::Para("No calibration was analysed (the chosen technique does not calibrate activations).".into())),
        Some(c) => {
            b.push(Block::Para(format!(
                "Score {:.3} (the least covered layer's; flagged below {:.2}). Per layer: the share of evaluation activations inside the range the {} calibration rows spanned, times one minus a Jensen–Shannon distance between calibration and evaluation activations (the larger of the value histograms' and the per-channel energy spreads'; {} evaluation rows). Least covered first.",
                c.score, r.min_calibration_score, c.calibration_rows, c.evaluation_rows
            )));
            let mut layers = c.layers.clone();
            layers.sort_by(|x, y| x.score.total_cmp(&y.score));
            let rows =
                layers.iter().take(15).map(|l| vec![l.value.clone(), format!("{:.2} %", l.inside * 100.0), f(l.js_distance, 3), f(l.score, 3)]).collect();
            b.push(Block::Table { head: vec!["value".into(), "inside calibrated range".into(), "JS distance".into(), "score".into()], rows, highlight: None });
        }
    }
    b.push(Block::Heading("Numerical stability".into()));
    b.push(Block::Para(format!(
        "Per-layer output error of the chosen model against the baseline on the same rows (relative L2 error, SQNR), and the share of activations clipped by each quantized value's range. Non-finite values in the chosen model's outputs: {}.",
        a.non_finite_outputs
    )));
    if !a.layer_errors.is_empty() {
        let rows = a
            .layer_errors
            .iter()
            .enumerate()
            .map(|(i, l)| {
                vec![
                    (i + 1).to_string(),
                    l.value.clone(),
                    f(l.relative_error, 4),
                    f(l.sqnr_db, 1),
                    l.saturation.map_or_else(|| "—".into(), |s| format!("{:.3} %", s * 100.0)),
                ]
            })
            .collect();
        b.push(Block::Table { head: vec!["#".into(), "value".into(), "relative error".into(), "SQNR dB".into(), "clipped".into()], rows, highlight: None });
    }
    b.extend(take("Per-layer error"));
    b.extend(take("Per-layer sensitivity"));
}

fn lineage(r: &Report, b: &mut Vec<Block>) {
    b.push(Block::Heading("Lineage".into()));
    let Some(m) = &r.manifest else {
        b.push(Block::Para("No manifest was recorded.".into()));
        return;
    };
    b.push(Block::Para(format!(
        "tamp {}, ONNX Runtime {}, CPU {} ({} logical cores; {}). Seeds: calibration {:?}, evaluation {}.",
        m.tamp_version,
        m.onnxruntime,
        m.cpu.model,
        m.cpu.logical_cores,
        m.cpu.features.join(" "),
        m.seeds.stages.iter().map(|s| s.calibration).collect::<Vec<_>>(),
        m.seeds.evaluation
    )));
    let rows = m.inputs.iter().chain(m.outputs.iter()).map(|e| vec![e.role.clone(), e.path.clone(), e.sha256.clone(), size(e.size_bytes)]).collect();
    b.push(Block::Table { head: vec!["role".into(), "file".into(), "sha256".into(), "size".into()], rows, highlight: None });
    if let Some(cmd) = &r.reproduce {
        b.push(Block::Para("Reproduce:".into()));
        b.push(Block::Code(cmd.clone()));
    }
    b.push(Block::Para("Recipe:".into()));
    b.push(Block::Code(serde_yaml_ng::to_string(&m.recipe).unwrap_or_default()));
    if !r.events.is_empty() {
        b.push(Block::Para("Event history:".into()));
        let rows = r.events.iter().map(|e| vec![e.at.clone(), e.kind.clone(), e.detail.clone()]).collect();
        b.push(Block::Table { head: vec!["time".into(), "event".into(), "detail".into()], rows, highlight: None });
    }
}
