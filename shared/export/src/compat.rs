//! The pre-flight compatibility check: before any compute, for each runtime a recipe targets,
//! what in the input model and in the forms the recipe's stages will write that runtime
//! cannot run. One [`Problem`] per node or stage: where, what, why, and what to change.
//!
//! - **ONNX Runtime (CPU):** the opsets this build's ONNX Runtime implements, and operator
//!   domains it has kernels for.
//! - **TFLite / LiteRT:** the model goes through the TFLite converter itself (in fp32, so
//!   only what the graph is matters), so the check and the export cannot disagree; then the
//!   recipe's output forms against TFLite's int8 spec: no 4-bit weights, no ONNX Runtime
//!   dynamic-int8 graph, symmetric weights with zero point 0, no early-exit cascade.

use tamp_domain::recipe::{PtqMode, PtqStage, Recipe, Stage, Target};
use tamp_domain::results::RuntimeCheck;
use tamp_onnx::Model;

use crate::Problem;
use crate::tflite::{self, Options, Precision};

/// The newest `ai.onnx` opset the bundled ONNX Runtime (1.31) implements.
pub const ORT_MAX_OPSET: i64 = 23;

/// Operator domains ONNX Runtime's CPU provider has kernels for.
const ORT_DOMAINS: &[&str] = &["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"];

/// Checks `model` and `recipe` against every runtime in `recipe.targets`.
pub fn preflight(model: &Model, recipe: &Recipe) -> Vec<RuntimeCheck> {
    recipe
        .targets
        .iter()
        .map(|&t| {
            let problems = match t {
                Target::Onnxruntime => onnxruntime(model),
                Target::Tflite => tflite_model(model).into_iter().chain(tflite_forms(model, recipe)).collect(),
                other => vec![Problem::at("", "", &format!("no exporter for `{}` in this build", other.as_str()), "list onnxruntime or tflite in `targets`")],
            };
            let problems: Vec<Problem> = problems.into_iter().map(|p| p.on(t.as_str())).collect();
            RuntimeCheck { runtime: t.as_str().to_owned(), compatible: problems.is_empty(), problems, artifact: None }
        })
        .collect()
}

/// Every problem of a preflight, one line each (empty when all runtimes are fine).
pub fn problems(checks: &[RuntimeCheck]) -> Vec<Problem> {
    checks.iter().flat_map(|c| c.problems.iter().cloned()).collect()
}

fn onnxruntime(model: &Model) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(v) = model.opset("").filter(|&v| v > ORT_MAX_OPSET) {
        out.push(Problem::at(
            "",
            "opset",
            &format!("the model imports ai.onnx opset {v}; this ONNX Runtime implements up to {ORT_MAX_OPSET}"),
            "re-export at a lower opset",
        ));
    }
    for n in &model.graph().node {
        let domain = n.domain.as_deref().unwrap_or("");
        if !ORT_DOMAINS.contains(&domain) {
            out.push(Problem::at(
                &n.name.clone().unwrap_or_default(),
                n.op_type.as_deref().unwrap_or(""),
                &format!("custom operator domain `{domain}`: ONNX Runtime has no kernel for it"),
                "register its custom-op library, or replace the op",
            ));
        }
    }
    out
}

fn tflite_model(model: &Model) -> Vec<Problem> {
    match tflite::convert::convert(model, &Options { precision: Precision::Float32, ..Options::default() }) {
        Ok(_) => Vec::new(),
        Err(ps) => ps,
    }
}

/// `ptq` in `mode: auto` is dynamic on transformer-style graphs (MatMul by weights, no Conv).
fn auto_is_dynamic(model: &Model) -> bool {
    let ops = || model.graph().node.iter().filter_map(|n| n.op_type.as_deref());
    !ops().any(|o| o == "Conv") && ops().any(|o| o == "MatMul" || o == "Gemm")
}

fn tflite_forms(model: &Model, recipe: &Recipe) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, stage) in recipe.policy.stages.iter().enumerate() {
        let at = format!("policy.stages[{i}]");
        let kind = stage.kind();
        let mut push = |why: &str, fix: &str| out.push(Problem::at(&at, kind, why, fix));
        match stage {
            Stage::Ptq(p) | Stage::Qat(p) => ptq_forms(p, model, &mut push),
            Stage::Search(s) if s.space.iter().any(|p| p.label() == "int4") => {
                push("the search space holds int4 (4-bit MatMulNBits / int4 Conv weights): TFLite has no 4-bit weight kernels", "drop int4 from `space`");
            }
            Stage::EarlyExit(_) => push(
                "an early-exit cascade (If branches on confidence): TFLite's exporter writes one straight-line subgraph",
                "export the cascade to ONNX Runtime",
            ),
            _ => {}
        }
    }
    out
}

fn ptq_forms(p: &PtqStage, model: &Model, push: &mut dyn FnMut(&str, &str)) {
    if p.bits.weights.contains(&4) || p.layers.values().any(|l| l.label() == "int4") {
        push("4-bit weights (MatMulNBits / int4 Conv): TFLite has no 4-bit weight kernels", "use bits.weights: [8] for a TFLite target");
    }
    let dynamic = match p.mode {
        PtqMode::Dynamic => true,
        PtqMode::Auto => auto_is_dynamic(model),
        PtqMode::Static => false,
    };
    if dynamic && p.bits.weights.contains(&8) {
        push(
            "dynamic int8 (MatMulInteger / DynamicQuantizeLinear) is ONNX Runtime's form; TFLite's dynamic-range kernels are another graph",
            "use mode: static for a TFLite target, or export the fp32 model with `tamp export --precision dynamic-int8`",
        );
    }
    if !p.symmetric {
        push("asymmetric weights with zero points: TFLite's int8 spec takes symmetric weights (zero point 0)", "drop `symmetric: false`");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tamp_onnx::builder::GraphBuilder;

    fn cnn() -> Model {
        let mut b = GraphBuilder::new("cnn", 17);
        let x = b.input_f32("x", &[None, Some(3), Some(8), Some(8)]);
        let w = b.init_f32("w", ndarray::ArrayD::zeros(vec![4, 3, 3, 3]));
        let c = b.op("Conv", &[&x, &w], &[("kernel_shape", tamp_onnx::builder::Attr::Ints(vec![3, 3]))]);
        b.op_n("Relu", &[&c], &["y"], &[]);
        b.output_f32("y", &[None, Some(4), Some(6), Some(6)]);
        b.build()
    }

    fn recipe(stages: &str) -> Recipe {
        let text = format!("version: 1\ntargets: [onnxruntime, tflite]\npolicy:\n  name: t\n  stages:\n{stages}");
        Recipe::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn a_plain_int8_cnn_recipe_passes_for_both_runtimes() {
        let checks = preflight(&cnn(), &recipe("    - ptq: {}\n"));
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.compatible), "{checks:?}");
    }

    #[test]
    fn an_op_tflite_has_no_builtin_for_is_named_with_its_node() {
        let mut b = GraphBuilder::new("erf", 17);
        let x = b.input_f32("x", &[None, Some(4)]);
        b.op_n("Erf", &[&x], &["y"], &[]);
        b.output_f32("y", &[None, Some(4)]);
        let checks = preflight(&b.build(), &recipe("    - ptq: {mode: static}\n"));
        assert!(checks[0].compatible);
        let lines: Vec<String> = checks[1].problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("tflite: node 'erf_node_1' (Erf): Erf has no TFLite builtin"), "{lines:?}");
    }

    #[test]
    fn search_with_int4_and_early_exits_are_refused_for_tflite() {
        let checks = preflight(&cnn(), &recipe("    - search: {space: [float, int8, int4]}\n"));
        assert!(checks[1].problems.iter().any(|p| p.node == "policy.stages[0]" && p.why.contains("int4")), "{checks:?}");
        let opsets = {
            let mut m = cnn();
            m.proto.opset_import[0].version = Some(ORT_MAX_OPSET + 1);
            preflight(&m, &recipe("    - ptq: {}\n"))
        };
        assert!(!opsets[0].compatible && opsets[0].problems[0].why.contains("opset 24"), "{opsets:?}");
    }

    #[test]
    fn int4_asymmetric_and_dynamic_forms_are_named_for_tflite_only() {
        let checks = preflight(&cnn(), &recipe("    - ptq: {bits: {weights: [4]}}\n    - ptq: {symmetric: false}\n    - ptq: {mode: dynamic}\n"));
        assert!(checks[0].compatible, "onnxruntime runs all of these: {checks:?}");
        let lines: Vec<String> = checks[1].problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("tflite: node 'policy.stages[0]' (ptq): 4-bit weights"), "{lines:?}");
        assert!(lines[1].starts_with("tflite: node 'policy.stages[1]' (ptq): asymmetric weights"), "{lines:?}");
        assert!(lines[2].starts_with("tflite: node 'policy.stages[2]' (ptq): dynamic int8"), "{lines:?}");
    }
}
