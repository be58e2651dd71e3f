//! Sequence metrics (FR-010): corpus BLEU as `sacrebleu` computes it (13a tokenizer,
//! exponential smoothing), ROUGE-L F1 as `rouge-score` does (lower-cased alphanumeric tokens,
//! no stemming), WER and CER as `jiwer` does (corpus-level: edits over reference length), and
//! perplexity from logits and target ids. Each is checked against its reference in
//! `tests/metrics.rs` on shared inputs.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// The `13a` tokenizer (mteval-v13a), sacrebleu's default.
pub fn tokenize_13a(line: &str) -> String {
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        [(r"([\{-~\[-` -&\(-\+:-@/])", " $1 "), (r"([^0-9])([\.,])", "$1 $2 "), (r"([\.,])([^0-9])", " $1 $2"), (r"([0-9])(-)", "$1 $2 ")]
            .into_iter()
            .map(|(r, s)| (Regex::new(r).unwrap_or_else(|e| unreachable!("a fixed pattern: {e}")), s))
            .collect()
    });
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let mut s = format!(" {line} ");
    for (re, rep) in RULES.iter() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ngrams(tokens: &[&str], n: usize) -> HashMap<Vec<String>, usize> {
    let mut m = HashMap::new();
    for w in tokens.windows(n) {
        *m.entry(w.iter().map(|t| (*t).to_owned()).collect()).or_insert(0) += 1;
    }
    m
}

/// Corpus BLEU (0–100), one reference per hypothesis.
pub fn bleu(hypotheses: &[&str], references: &[&str]) -> f64 {
    const ORDER: usize = 4;
    let (mut correct, mut total) = ([0usize; ORDER], [0usize; ORDER]);
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (tokenize_13a(h), tokenize_13a(r));
        let (ht, rt): (Vec<&str>, Vec<&str>) = (h.split(' ').filter(|t| !t.is_empty()).collect(), r.split(' ').filter(|t| !t.is_empty()).collect());
        sys_len += ht.len();
        ref_len += rt.len();
        for n in 1..=ORDER {
            let (hn, rn) = (ngrams(&ht, n), ngrams(&rt, n));
            total[n - 1] += ht.len().saturating_sub(n - 1);
            correct[n - 1] += hn.iter().map(|(g, c)| (*c).min(rn.get(g).copied().unwrap_or(0))).sum::<usize>();
        }
    }
    if correct.iter().all(|c| *c == 0) {
        return 0.0; // no match at all: sacrebleu stops early with 0
    }
    let mut precisions = [0.0f64; ORDER];
    let mut smooth = 1.0;
    for n in 0..ORDER {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    let bp = if sys_len < ref_len { if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 } } else { 1.0 };
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    bp * (precisions.iter().map(|p| log(*p)).sum::<f64>() / ORDER as f64).exp()
}

fn rouge_tokens(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    let cleaned: String = lower.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { ' ' }).collect();
    cleaned.split_whitespace().map(str::to_owned).collect()
}

fn lcs<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Mean ROUGE-L F1 over pairs (0–1).
pub fn rouge_l(hypotheses: &[&str], references: &[&str]) -> f64 {
    let scores: Vec<f64> = hypotheses
        .iter()
        .zip(references)
        .map(|(h, r)| {
            let (h, r) = (rouge_tokens(h), rouge_tokens(r));
            if h.is_empty() || r.is_empty() {
                return 0.0;
            }
            let l = lcs(&r, &h) as f64;
            let (p, rc) = (l / h.len() as f64, l / r.len() as f64);
            if p + rc > 0.0 { 2.0 * p * rc / (p + rc) } else { 0.0 }
        })
        .collect();
    scores.iter().sum::<f64>() / scores.len().max(1) as f64
}

fn edits<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Word error rate: word edits over reference words, over the corpus (0–1, can exceed 1).
pub fn wer(hypotheses: &[&str], references: &[&str]) -> f64 {
    let (mut e, mut n) = (0usize, 0usize);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r): (Vec<&str>, Vec<&str>) = (h.split_whitespace().collect(), r.split_whitespace().collect());
        e += edits(&r, &h);
        n += r.len();
    }
    e as f64 / n.max(1) as f64
}

/// Character error rate: character edits over reference characters (spaces count; the ends
/// are stripped, as `jiwer.cer` does).
pub fn cer(hypotheses: &[&str], references: &[&str]) -> f64 {
    let norm = |s: &str| s.trim().chars().collect::<Vec<char>>();
    let (mut e, mut n) = (0usize, 0usize);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (norm(h), norm(r));
        e += edits(&r, &h);
        n += r.len();
    }
    e as f64 / n.max(1) as f64
}

/// Perplexity: exp of the mean negative log-likelihood of `targets` under `logits`
/// (`[tokens, vocab]` row-major); targets below 0 (e.g. −100, padding) are skipped.
pub fn perplexity(logits: &[f32], vocab: usize, targets: &[i64]) -> f64 {
    let (mut nll, mut n) = (0.0f64, 0usize);
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        let Ok(t) = usize::try_from(t) else { continue };
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = f64::from(max) + row.iter().map(|x| f64::from(x - max).exp()).sum::<f64>().ln();
        nll += lse - f64::from(row[t.min(vocab - 1)]);
        n += 1;
    }
    (nll / n.max(1) as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_text_scores_perfectly_and_edits_count() {
        let s = ["the cat sat on the mat."];
        assert!((bleu(&s, &s) - 100.0).abs() < 1e-9 && (rouge_l(&s, &s) - 1.0).abs() < 1e-12);
        assert_eq!((wer(&s, &s), cer(&s, &s)), (0.0, 0.0));
        assert!((wer(&["a b d"], &["a b c"]) - 1.0 / 3.0).abs() < 1e-12);
        assert!((perplexity(&[0.0; 8], 4, &[1, 2]) - 4.0).abs() < 1e-9, "uniform over 4 → 4");
    }
}
