//! What a job request may change in a stored policy (the PRD's `POST /jobs` body:
//! `target_runtimes` and `constraints`), applied to the YAML so the job keeps one recipe
//! text, and where in that text an error lies (the policy editor marks the line).

use super::{Recipe, RecipeError};

/// The runtimes a job may target, as the recipe's `targets` spells them.
pub const RUNTIMES: [&str; 4] = ["onnxruntime", "tflite", "tensorrt", "openvino"];

/// The constraint keys a job request may set (each a number).
pub const CONSTRAINTS: [&str; 3] = ["max_metric_drop_pct", "max_latency_ms_p50", "min_compression_ratio"];

impl RecipeError {
    /// The 1-based line the error points at, where it names one.
    pub fn line(&self) -> Option<usize> {
        match self {
            RecipeError::Invalid { line, .. } => *line,
            // serde_yaml_ng ends its messages with "at line L column C".
            RecipeError::Schema(text) => {
                let at = text.rfind("line ")?;
                text[at + 5..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            }
        }
    }
}

/// Returns `yaml` with `targets` replaced by `runtimes` (when given) and each given
/// constraint set, then checks the result is still a valid recipe.
pub fn apply_job_overrides(yaml: &str, runtimes: Option<&[String]>, constraints: &[(String, f64)]) -> Result<String, RecipeError> {
    let schema = |m: String| RecipeError::Schema(m);
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).map_err(|e| schema(e.to_string()))?;
    let map = doc.as_mapping_mut().ok_or_else(|| schema("the policy is not a YAML mapping".into()))?;
    if let Some(runtimes) = runtimes {
        if runtimes.is_empty() {
            return Err(schema("target_runtimes is empty: name at least one of onnxruntime, tflite, tensorrt, openvino".into()));
        }
        if let Some(bad) = runtimes.iter().find(|r| !RUNTIMES.contains(&r.as_str())) {
            return Err(schema(format!("target_runtimes: unknown runtime `{bad}` (one of {})", RUNTIMES.join(", "))));
        }
        let list = runtimes.iter().map(|r| serde_yaml_ng::Value::String(r.clone())).collect();
        map.insert("targets".into(), serde_yaml_ng::Value::Sequence(list));
    }
    if !constraints.is_empty() {
        let entry = map.entry("constraints".into()).or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
        let c = entry.as_mapping_mut().ok_or_else(|| schema("the policy's `constraints` is not a mapping".into()))?;
        for (k, v) in constraints {
            if !CONSTRAINTS.contains(&k.as_str()) {
                return Err(schema(format!("constraints: unknown key `{k}` (one of {})", CONSTRAINTS.join(", "))));
            }
            c.insert(k.as_str().into(), (*v).into());
        }
    }
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| schema(e.to_string()))?;
    Recipe::from_yaml(&text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "policy:\n  name: p\n  stages:\n    - ptq: {}\nconstraints: {max_metric_drop_pct: 1.0}\n";

    #[test]
    fn overrides_replace_targets_and_merge_constraints() {
        let c = [("max_latency_ms_p50".to_owned(), 5.0)];
        let out = apply_job_overrides(YAML, Some(&["onnxruntime".into(), "tflite".into()]), &c).unwrap();
        let r = Recipe::from_yaml(&out).unwrap();
        assert_eq!(r.targets.len(), 2);
        assert_eq!(r.constraints.max_metric_drop_pct, 1.0);
        assert_eq!(r.constraints.max_latency_ms_p50, Some(5.0));
    }

    #[test]
    fn bad_overrides_say_what_is_allowed() {
        let e = apply_job_overrides(YAML, Some(&["coreml".into()]), &[]).unwrap_err().to_string();
        assert!(e.contains("coreml") && e.contains("tflite"), "{e}");
        let e = apply_job_overrides(YAML, None, &[("max_speed".into(), 1.0)]).unwrap_err().to_string();
        assert!(e.contains("max_latency_ms_p50"), "{e}");
        let e = apply_job_overrides(YAML, None, &[("min_compression_ratio".into(), 0.5)]).unwrap_err().to_string();
        assert!(e.contains("min_compression_ratio"), "{e}");
    }

    #[test]
    fn errors_name_their_line() {
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - ptq: {colour: red}\n").unwrap_err();
        assert_eq!(e.line(), Some(4), "{e}");
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - ptq: {}\nconstraints: {max_metric_drop_pct: -1}\n").unwrap_err();
        assert_eq!(e.line(), Some(5), "{e}");
    }
}
