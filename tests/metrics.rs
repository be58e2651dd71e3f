//! The sequence metrics (BLEU, ROUGE-L, WER, CER, perplexity) against their reference Python
//! implementations (`sacrebleu`, `rouge-score`, `jiwer`; perplexity against numpy's
//! log-softmax) on the same inputs: punctuation, numbers with separators, case, HTML
//! entities, hyphens, empty overlaps and repeated words.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Command;

use crate::support::models::{python, run};
use tamp_engine::text_metrics::{bleu, cer, perplexity, rouge_l, wer};

const HYPS: &[&str] = &[
    "The cat sat on the mat.",
    "It costs $1,250.50 -- or 3-4 euros, roughly.",
    "the quick brown fox jumps over the lazy dog",
    "Hello &amp; welcome to the U.S. office!",
    "completely different words here",
    "a a a a the the",
    "state-of-the-art models (e.g. BERT) work well",
];
const REFS: &[&str] = &[
    "The cat is sitting on the mat.",
    "It costs $1,250.50 -- about 3-4 euros.",
    "the quick brown fox jumped over the lazy dog",
    "Hello & welcome to the US office!",
    "nothing in common at all",
    "a cat and the dog",
    "State of the art models, e.g. BERT, work well.",
];

const SCRIPT: &str = r#"
import json, sys
import numpy as np, sacrebleu, jiwer
from rouge_score import rouge_scorer
d = json.loads(sys.stdin.read())
h, r = d["hyps"], d["refs"]
sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
rl = sum(sc.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(h, r)) / len(h)
logits = np.array(d["logits"], dtype=np.float32).reshape(-1, d["vocab"]).astype(np.float64)
t = np.array(d["targets"])
m = logits.max(axis=1, keepdims=True)
logp = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
keep = t >= 0
ppl = float(np.exp(-logp[np.arange(len(t))[keep], t[keep]].mean()))
print(json.dumps({"bleu": sacrebleu.corpus_bleu(h, [r]).score, "rouge_l": rl, "wer": jiwer.wer(r, h), "cer": jiwer.cer(r, h), "ppl": ppl}))
"#;

#[test]
fn sequence_metrics_match_their_python_references() {
    let vocab = 7;
    let logits: Vec<f32> = (0..5 * vocab).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
    let targets = [3i64, -100, 0, 6, 2];
    let input = serde_json::json!({ "hyps": HYPS, "refs": REFS, "logits": logits, "vocab": vocab, "targets": targets });
    let mut child = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = [
        ("bleu", bleu(HYPS, REFS)),
        ("rouge_l", rouge_l(HYPS, REFS)),
        ("wer", wer(HYPS, REFS)),
        ("cer", cer(HYPS, REFS)),
        ("ppl", perplexity(&logits, vocab, &targets)),
    ];
    for (name, v) in got {
        let w = want[name].as_f64().unwrap();
        assert!((v - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}: tamp {v} vs reference {w}");
    }
    // Each pair on its own, too (BLEU's brevity penalty and smoothing per sentence).
    for (h, r) in HYPS.iter().zip(REFS) {
        let one = serde_json::json!({ "hyps": [h], "refs": [r], "logits": [0.0], "vocab": 1, "targets": [0] });
        let mut c = Command::new(python()).arg("-c").arg(SCRIPT).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), one.to_string().as_bytes()).unwrap();
        let w: serde_json::Value = serde_json::from_slice(&c.wait_with_output().unwrap().stdout).unwrap();
        for (name, v) in [("bleu", bleu(&[h], &[r])), ("rouge_l", rouge_l(&[h], &[r])), ("wer", wer(&[h], &[r])), ("cer", cer(&[h], &[r]))] {
            let wv = w[name].as_f64().unwrap();
            assert!((v - wv).abs() <= 1e-6 * wv.abs().max(1.0), "{name} on {h:?}: tamp {v} vs reference {wv}");
        }
    }
    let _ = run;
}
