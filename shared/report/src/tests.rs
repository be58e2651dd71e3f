//! Risk flags and the recommendation on crafted runs, the cost arithmetic recomputed by
//! hand, and both renderers on a full report.

use tamp_domain::Recipe;
use tamp_domain::recipe::Objective;
use tamp_domain::results::{Analysis, CalibrationCoverage, Candidate, CohortResult, LayerCoverage, LayerError, Measured, Outcome, Profile, ShiftResult};

use crate::model::{Recommendation, Report, Sources};
use crate::{PriceTable, doc, html, pdf};

fn measured(value: f64, p50: f64, size: u64, thr: f64) -> Measured {
    Measured {
        metric: "top1".into(),
        value,
        latency_ms_p50: p50,
        latency_ms_p95: p50 * 1.1,
        throughput_b32: Some(thr),
        size_bytes: size,
        sha256: "ab".repeat(32),
        eval_rows: 1000,
        macs_per_sample: Some(2_550_000),
    }
}

fn candidate(id: &str, value: f64, drop: f64, speedup: f64) -> Candidate {
    Candidate {
        id: id.into(),
        stage: 0,
        technique: "ptq".into(),
        mode: "static".into(),
        weights_bits: 8,
        activations_bits: 8,
        calibration: Some("minmax".into()),
        per_channel_weights: true,
        float_nodes: vec![],
        file: format!("candidates/{id}.onnx"),
        measured: measured(value, 1.0 / speedup, 80_000, 30_000.0),
        compression_ratio: 3.5,
        metric_drop_pct: drop,
        speedup_p50: speedup,
        speedup_interval: None,
        faster: speedup > 1.0,
        missed: if drop > 1.0 { vec![format!("max_metric_drop_pct: top1 dropped {drop:.2}% (limit 1%)")] } else { vec![] },
        flags: vec![],
        coded_size_bytes: 70_000,
        target_isa: None,
        details: None,
        training: None,
    }
}

fn outcome(c: Candidate) -> Outcome {
    Outcome {
        baseline: measured(89.25, 1.0, 311_000, 20_000.0),
        chosen: c.id.clone(),
        candidates: vec![c],
        reason: "test".into(),
        objective: Objective::Latency,
        preparation: None,
        not_applied: vec![],
        warnings: vec![],
    }
}

fn analysis() -> Analysis {
    let profile = Profile {
        latency_ms_p50: 0.05,
        latency_ms_p95: 0.06,
        latency_ms_p99: 0.07,
        latency_samples_ms: (0..100).map(|i| 0.05 + f64::from(i) * 1e-4).collect(),
        peak_memory_mb: 3.0,
    };
    Analysis {
        candidate: "c".into(),
        metric: "top1".into(),
        baseline: profile.clone(),
        chosen: profile,
        robustness: (1..=3)
            .map(|l| ShiftResult {
                shift: "gaussian_noise".into(),
                level: f64::from(l) * 0.1,
                seed: 0,
                rows: 256,
                baseline: 90.0 - f64::from(l),
                chosen: 89.8 - f64::from(l),
            })
            .collect(),
        cohorts: vec![CohortResult { cohort: 0, rows: 500, baseline: 90.0, chosen: 89.9, drop_pct: 0.11 }],
        calibration: Some(CalibrationCoverage {
            score: 0.97,
            calibration_rows: 256,
            evaluation_rows: 256,
            layers: vec![LayerCoverage { value: "relu_5".into(), inside: 0.999, js_distance: 0.03, score: 0.969 }],
        }),
        layer_errors: vec![LayerError { value: "relu_5".into(), relative_error: 0.05, sqnr_db: 26.0, saturation: Some(0.001) }],
        ..Analysis::default()
    }
}

fn build(o: Outcome, a: Option<Analysis>, recipe: &str) -> Report {
    let recipe = Recipe::from_yaml(recipe).unwrap();
    let prices = PriceTable::defaults().with(&recipe.report);
    Report::build(Sources { title: "t".into(), outcome: Some(o), analysis: a, recipe: Some(recipe), ..Sources::default() }, &prices).unwrap()
}

const RECIPE: &str = "policy: {name: p, stages: [{ptq: {}}]}\nconstraints: {max_metric_drop_pct: 1.0}\nreport: {qps: 2000, instance: c7i.xlarge}\n";

#[test]
fn a_clean_candidate_ships() {
    let r = build(outcome(candidate("c", 89.3, -0.05, 1.3)), Some(analysis()), RECIPE);
    assert_eq!(r.recommendation, Recommendation::Ship, "{:?}", r.flags);
}

#[test]
fn a_candidate_over_its_metric_budget_is_dont_ship() {
    let r = build(outcome(candidate("c", 80.0, 10.36, 1.3)), Some(analysis()), RECIPE);
    assert_eq!(r.recommendation, Recommendation::DontShip);
    assert!(r.flags.iter().any(|f| f.kind == "metric_over_budget" && f.message.contains("10.36")), "{:?}", r.flags);
}

#[test]
fn a_cohort_regression_beyond_its_threshold_is_flagged_naming_the_cohort() {
    let mut a = analysis();
    a.cohorts.push(CohortResult { cohort: 7, rows: 100, baseline: 90.0, chosen: 85.0, drop_pct: 5.56 });
    let r = build(outcome(candidate("c", 89.3, -0.05, 1.3)), Some(a.clone()), RECIPE);
    assert_eq!(r.recommendation, Recommendation::ShipWithCaveats);
    let f = r.flags.iter().find(|f| f.kind == "cohort_regression").expect("a cohort flag");
    assert!(f.message.contains("cohort 7") && !f.message.contains("cohort 0"), "{}", f.message);
    // A recipe threshold above the drop clears it.
    let lenient =
        build(outcome(candidate("c", 89.3, -0.05, 1.3)), Some(a), &RECIPE.replace("instance: c7i.xlarge}", "instance: c7i.xlarge, cohort_max_drop_pct: 6}"));
    assert!(lenient.flags.iter().all(|f| f.kind != "cohort_regression"), "{:?}", lenient.flags);
}

#[test]
fn low_calibration_coverage_slower_candidates_and_unstable_layers_are_caveats() {
    let mut a = analysis();
    a.calibration = Some(CalibrationCoverage {
        score: 0.62,
        calibration_rows: 256,
        evaluation_rows: 256,
        layers: vec![
            LayerCoverage { value: "relu_37".into(), inside: 0.8, js_distance: 0.4, score: 0.48 },
            LayerCoverage { value: "relu_5".into(), inside: 1.0, js_distance: 0.05, score: 0.95 },
        ],
    });
    a.layer_errors.push(LayerError { value: "gemm_1".into(), relative_error: 0.6, sqnr_db: 4.4, saturation: Some(0.2) });
    let r = build(outcome(candidate("c", 89.3, -0.05, 0.8)), Some(a), RECIPE);
    assert_eq!(r.recommendation, Recommendation::ShipWithCaveats);
    let kinds: Vec<&str> = r.flags.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, ["slower_than_baseline", "unstable_layers", "calibration_not_representative"], "{:?}", r.flags);
    let cal = &r.flags[2].message;
    assert!(cal.contains("relu_37") && !cal.contains("relu_5 "), "names only the low layers: {cal}");
}

#[test]
fn non_finite_outputs_block() {
    let mut a = analysis();
    a.non_finite_outputs = 3;
    assert_eq!(build(outcome(candidate("c", 89.3, 0.0, 1.3)), Some(a), RECIPE).recommendation, Recommendation::DontShip);
}

/// The projection recomputed by hand from the measured throughput and the stated prices.
#[test]
fn the_cost_projection_follows_from_throughput_and_prices() {
    let r = build(outcome(candidate("c", 89.3, -0.05, 1.3)), None, RECIPE);
    let c = r.cost.as_ref().expect("a projection");
    // c7i.xlarge: 4 vCPUs, $0.1785/h; 1 thread per replica → 4 replicas; 60 % utilisation.
    let table = PriceTable::defaults();
    let p = &table.instances["c7i.xlarge"];
    assert_eq!((c.vcpus, c.usd_per_hour), (p.vcpus, p.usd_per_hour));
    let cap_before = 20_000.0 * 4.0 * 0.6; // 48,000 req/s per instance
    let cap_after = 30_000.0 * 4.0 * 0.6;
    assert!((c.before.instance_capacity_qps - cap_before).abs() < 1e-6 && (c.after.instance_capacity_qps - cap_after).abs() < 1e-6);
    assert_eq!((c.before.instances, c.after.instances), (1, 1), "2000 req/s fits one instance either way");
    assert!((c.before.monthly_usd - 0.1785 * 730.0).abs() < 1e-9);
    // At 100k req/s: ⌈100000/48000⌉ = 3 before, ⌈100000/72000⌉ = 2 after.
    let big = build(outcome(candidate("c", 89.3, -0.05, 1.3)), None, &RECIPE.replace("qps: 2000", "qps: 100000"));
    let c = big.cost.unwrap();
    assert_eq!((c.before.instances, c.after.instances), (3, 2));
    assert!((c.monthly_saving_usd - 0.1785 * 730.0).abs() < 1e-9 && (c.saving_pct - 100.0 / 3.0).abs() < 1e-9);
    // A recipe's own price overrides the table and is named in the source.
    let own = build(
        outcome(candidate("c", 89.3, -0.05, 1.3)),
        None,
        &RECIPE.replace("instance: c7i.xlarge}", "instance: mybox, prices: {mybox: {vcpus: 2, usd_per_hour: 1.0}}}"),
    );
    let c = own.cost.unwrap();
    assert!((c.before.monthly_usd - 730.0).abs() < 1e-9 && c.price_source.contains("mybox"));
}

#[test]
fn both_renderers_carry_every_section_and_the_pdf_is_a_pdf() {
    let r = build(outcome(candidate("c", 89.3, -0.05, 1.3)), Some(analysis()), RECIPE);
    let blocks = doc::blocks(&r);
    let h = html::render(&blocks);
    for s in [
        "Recommendation: Ship",
        "Baseline vs candidates",
        "Cost projection",
        "Robustness",
        "Cohorts",
        "Calibration representativeness",
        "Numerical stability",
        "<svg",
        "<table",
    ] {
        assert!(h.contains(s), "HTML lacks {s}");
    }
    assert!(!h.contains("http://") || h.matches("http://").all(|_| h.contains("xmlns=\"http://www.w3.org/2000/svg\"")), "no network references");
    let p = pdf::render(&blocks).unwrap();
    assert!(p.starts_with(b"%PDF-") && p.len() < 2 << 20, "{} bytes", p.len());
}

/// A cascade candidate's curve becomes its own section: one row per threshold with the
/// shares per exit, the chosen threshold highlighted, and the cascade file's own timing.
#[test]
fn an_early_exit_cascade_shows_its_curve_and_its_own_timing() {
    use tamp_domain::results::{CascadeTiming, Details, EarlyExitDetails, ExitCurvePoint};
    let point = |threshold: f64, top1: f64, head: f64, ratio: f64| ExitCurvePoint {
        threshold,
        top1,
        answered: vec![head, 1.0 - head],
        average_latency_ms: 0.05 * ratio,
        latency_ratio: ratio,
        meets_constraint: top1 >= 88.75,
    };
    let mut c = candidate("s0-early-exit", 89.18, 0.06, 3.4);
    c.mode = "cascade".into();
    c.details = Some(Details::EarlyExit(EarlyExitDetails {
        exits: vec!["relu_5".into()],
        exit_top1: vec![89.13, 89.23],
        latency_ms: vec![0.0094, 0.0483],
        baseline_latency_ms: 0.0431,
        curve: vec![point(0.5, 89.18, 0.96, 0.254), point(0.99, 89.23, 0.421, 0.741)],
        threshold: 0.5,
        batching: "per row at batch 1".into(),
        measured: Some(CascadeTiming {
            rows: 1000,
            rounds: 5,
            average_latency_ms: 0.0156,
            baseline_average_latency_ms: 0.0458,
            latency_ratio: 0.34,
            top1: 90.9,
            curve_top1: 90.9,
        }),
    }));
    let r = build(outcome(c), None, RECIPE);
    let blocks = doc::blocks(&r);
    let table = blocks.iter().find_map(|b| match b {
        doc::Block::Table { head, rows, highlight } if head[0] == "threshold" => Some((rows.clone(), *highlight)),
        _ => None,
    });
    let (rows, highlight) = table.expect("the curve's table");
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0][2].as_str(), rows[1][4].as_str(), highlight), ("96.0 % / 4.0 %", "0.741×", Some(0)));
    let h = html::render(&blocks);
    assert!(h.contains("Early exits: s0-early-exit") && h.contains("1000 evaluation rows") && h.contains("0.340×"), "{h}");
    assert!(pdf::render(&blocks).unwrap().starts_with(b"%PDF-"));
}
