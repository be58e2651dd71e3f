//! Mixed-precision search (issue: search under constraints) on the reference CNN, end to end
//! through `tamp search`: a search SIGKILLed mid-way and re-run gives the same journal and
//! front as one run straight through and re-measures nothing; four worker processes give the
//! same front as one; the chosen config fed back as a recipe rebuilds the artifact byte for
//! byte; a feasible constraint set is met and an infeasible one names what it missed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::models::{outcome, run};
use crate::support::{cnn, tamp};

/// `tamp search` on the reference CNN with a fixed budget; `cache` is the latency cache the
/// runs share (one artifact, one P50 on one machine: what makes two runs comparable).
fn search(out: &Path, cache: &Path, flags: &[&str]) -> Command {
    let m = cnn();
    let mut c = Command::new(tamp());
    c.arg("search")
        .arg(m.join("model.onnx"))
        .arg("--data")
        .arg(m.join("calib.npz"))
        .arg("--eval")
        .arg(m.join("eval.npz"))
        .arg("--out")
        .arg(out)
        .args(["--trials", "20", "--strategy", "nsga2", "--seed", "3", "--no-analysis"])
        .args(flags)
        .env("TAMP_CACHE_DIR", cache);
    c
}

fn ok(c: &mut Command) -> String {
    let r = run(c);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Every journal record (header dropped) as (kind, config, metric bits, size).
fn journal(out: &Path) -> Vec<(String, String, u64, u64)> {
    let text = std::fs::read_to_string(out.join("search/journal.jsonl")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let metric = v["metric"].as_f64().map_or(0, f64::to_bits);
            (v["kind"].as_str().unwrap().to_owned(), v["config"].as_str().unwrap().to_owned(), metric, v["size_bytes"].as_u64().unwrap())
        })
        .collect()
}

/// The front as comparable rows: config, metric, size, P50.
fn front(out: &Path) -> Vec<String> {
    let f = json(&out.join("search/front.json"));
    f["front"].as_array().unwrap().iter().map(|r| format!("{} {} {} {}", r["config"], r["metric"], r["size_bytes"], r["latency_ms_p50"])).collect()
}

#[test]
fn a_killed_search_resumes_to_the_same_front_and_fan_out_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // Straight through.
    let straight = tmp.path().join("straight");
    ok(&mut search(&straight, &cache, &[]));
    let whole = journal(&straight);
    assert!(whole.iter().filter(|r| r.0 == "trial").count() >= 10, "{whole:?}");
    assert!(!front(&straight).is_empty());

    // Killed once the journal holds a few records, with a half-written line appended (a kill
    // mid-write), then run again.
    let resumed = tmp.path().join("resumed");
    let live = tmp.path().join(".resumed.search/journal.jsonl");
    let mut child = search(&resumed, &cache, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    let lines = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    while lines(&live) < 12 && t.elapsed() < Duration::from_secs(120) {
        assert!(child.try_wait().unwrap().is_none(), "the search ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!resumed.exists(), "a killed run publishes nothing");
    let before = std::fs::read_to_string(&live).unwrap();
    let done_before = before.lines().count() - 1;
    assert!(done_before >= 11 && done_before < whole.len(), "killed after {done_before} of {} records", whole.len());
    std::fs::write(&live, format!("{before}{{\"n\":{done_before},\"kind\":\"tri")).unwrap();
    let again = ok(&mut search(&resumed, &cache, &[]));
    let _ = again;
    let replayed = journal(&resumed);
    assert_eq!(replayed, whole, "the resumed journal is the straight run's, record for record");
    let mut configs: Vec<(&String, &String)> = replayed.iter().map(|r| (&r.0, &r.1)).collect();
    configs.sort();
    configs.dedup();
    assert_eq!(configs.len(), replayed.len(), "no finished trial was measured twice");
    assert_eq!(front(&resumed), front(&straight));
    assert!(!tmp.path().join(".resumed.search").exists(), "the journal folder is removed once the results are in place");

    // Four worker processes.
    let fanned = tmp.path().join("fanned");
    ok(&mut search(&fanned, &cache, &["--workers", "4"]));
    assert_eq!(journal(&fanned), whole);
    assert_eq!(front(&fanned), front(&straight));

    // The chosen config, fed back as a recipe, rebuilds the chosen artifact byte for byte.
    let o = outcome(&straight);
    assert!(o.chosen.contains("-search-"), "{}", o.chosen);
    let recipe = straight.join("best.recipe.yaml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains("layers:") && text.contains("int8"), "{text}");
    let again = tmp.path().join("again");
    let m = cnn();
    ok(Command::new(tamp())
        .arg("compress")
        .arg(m.join("model.onnx"))
        .arg("--recipe")
        .arg(&recipe)
        .arg("--data")
        .arg(m.join("calib.npz"))
        .arg("--eval")
        .arg(m.join("eval.npz"))
        .arg("--out")
        .arg(&again)
        .arg("--no-analysis")
        .env("TAMP_CACHE_DIR", &cache));
    assert_eq!(std::fs::read(straight.join("best.onnx")).unwrap(), std::fs::read(again.join("best.onnx")).unwrap(), "byte for byte");
    // The proxy's rank correlation is reported, in front.json and in the report.
    let f = json(&straight.join("search/front.json"));
    let rho = f["proxy"]["spearman"].as_f64().unwrap_or_else(|| panic!("{}", f["proxy"]));
    let html = std::fs::read_to_string(straight.join("report.html")).unwrap();
    assert!(
        html.contains("Mixed-precision search") && html.contains(&format!("Spearman rank correlation with the measured drops {rho:.2}")),
        "the report's search section"
    );
}

#[test]
fn constraints_are_met_when_feasible_and_the_missed_one_is_named_when_not() {
    let tmp = tempfile::tempdir().unwrap();
    let cache: PathBuf = tmp.path().join("cache");
    // Feasible: at most 0.5 % drop, at least 4× smaller (int8 alone is 3.5×: int4 layers needed).
    let feasible = tmp.path().join("feasible");
    ok(&mut search(&feasible, &cache, &["--max-drop", "0.5", "--min-ratio", "4", "--objective", "size"]));
    let o = outcome(&feasible);
    let chosen = o.candidates.iter().find(|c| c.id == o.chosen).unwrap();
    assert!(chosen.missed.is_empty(), "{:?} ({})", chosen.missed, o.reason);
    assert!(chosen.compression_ratio >= 4.0 && chosen.metric_drop_pct <= 0.5, "{chosen:?}");
    assert_eq!(chosen.weights_bits, 4, "int4 layers make it");
    // Trials the size constraint rules out are recorded as pruned, never measured.
    let pruned = std::fs::read_to_string(feasible.join("search/journal.jsonl")).unwrap().matches("under min_compression_ratio").count();
    assert!(pruned > 0);

    // Infeasible: 50× smaller cannot be had; the closest point is kept and the miss named.
    let infeasible = tmp.path().join("infeasible");
    ok(&mut search(&infeasible, &cache, &["--min-ratio", "50"]));
    let o = outcome(&infeasible);
    assert!(o.reason.contains("no candidate meets every constraint") && o.reason.contains("min_compression_ratio"), "{}", o.reason);
    assert!(infeasible.join("best.onnx").exists());
}
