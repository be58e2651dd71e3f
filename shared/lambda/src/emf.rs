//! CloudWatch metrics from the functions in the embedded metric format: one JSON line on
//! stdout per observation, which Lambda's log pipeline turns into metrics in the `Tamp`
//! namespace (dimension `Function`) with no API call, no extra permission and no latency.
//! The module's alarms and dashboard (`infra/modules/tamp/observability.tf`) read them.

/// The namespace the module's alarms and dashboard read.
pub const NAMESPACE: &str = "Tamp";

/// The EMF document for `values` (name, value, unit) observed by `function` at `ms`.
pub fn document(function: &str, values: &[(&str, f64, &str)], ms: u128) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "_aws": {
            "Timestamp": ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": values.iter().map(|(n, _, u)| serde_json::json!({ "Name": n, "Unit": u })).collect::<Vec<_>>(),
            }],
        },
        "Function": function,
    });
    for (n, v, _) in values {
        doc[*n] = serde_json::json!(v);
    }
    doc
}

/// Writes `values` as one EMF line (nothing when `values` is empty). The `Function`
/// dimension is the deployed function's name (`<stack>-<function>`), so two teams' stacks in
/// one account keep their own numbers; `function` stands in outside Lambda.
pub fn emit(function: &str, values: &[(&str, f64, &str)]) {
    if values.is_empty() {
        return;
    }
    let deployed = std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok();
    let function = deployed.as_deref().unwrap_or(function);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    println!("{}", document(function, values, ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_value_it_carries() {
        let d = document("report", &[("JobsSucceeded", 1.0, "Count"), ("ReportSeconds", 0.25, "Seconds")], 7);
        assert_eq!(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Tamp");
        assert_eq!(d["_aws"]["CloudWatchMetrics"][0]["Metrics"][1]["Name"], "ReportSeconds");
        assert_eq!((d["JobsSucceeded"].as_f64(), d["ReportSeconds"].as_f64(), d["Function"].as_str()), (Some(1.0), Some(0.25), Some("report")));
    }
}
