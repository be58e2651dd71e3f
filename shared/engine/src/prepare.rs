//! Model preparation: what a model exported by another toolchain needs before any
//! technique runs, every step exact (outputs unchanged), each reported:
//! 1. **Opset upgrade** to 13 ([`passes::opset`]) when the model is older — per-axis
//!    quantization needs it, and a user holding only the `.onnx` cannot re-export.
//! 2. **Initializers out of the inputs**: IR-3 models list every weight as a graph input too,
//!    which makes ONNX Runtime treat weights as overridable inputs (no constant folding, no
//!    QDQ fusion) and Tamp's passes see them as activations.
//! 3. **Constant folding for the declared input shapes** by ONNX Runtime's basic-level
//!    optimizer (what `onnxruntime.quantization.quant_pre_process` does): weights in
//!    `Constant` nodes become initializers, `Shape → Gather/Slice → Concat → Reshape` chains
//!    whose inputs have fixed dimensions become constants, `Identity`/`Dropout` and dead nodes
//!    go. Run only where the graph has something of that kind, so models that need nothing
//!    pass through byte for byte.
//! 4. **Hard-swish in one op** ([`passes::hardswish`]): `x · clip(x + 3, 0, 6) / 6` spelled
//!    out in four elementwise ops becomes one `HardSwish` (one memory pass instead of four).
//! 5. **Squares as products** ([`passes::square`]): `Pow(x, 2)` becomes `Mul(x, x)`, the
//!    same values from one multiply instead of ONNX Runtime's general power kernel (a
//!    spectrogram's `real² + imag²`: 22 of oww_melspec's 272 µs).
//! 6. **Value info refresh**: the folded model's `value_info` is ONNX Runtime's inferred
//!    shapes; every later structural pass drops the value infos it invalidates
//!    ([`tamp_onnx::Patch::apply`]).

use tamp_domain::results::Preparation;
use tamp_onnx::Model;

use crate::error::Result;
use crate::passes::hardswish::FuseHardSwish;
use crate::passes::opset;
use crate::passes::square::SquareByMul;
use crate::runtime::{self, OptimizationLevel, SessionConfig};
use tamp_onnx::Pass;

fn count(model: &Model, ops: &[&str]) -> usize {
    model.graph().node.iter().filter(|n| ops.contains(&n.op_type.as_deref().unwrap_or(""))).count()
}

/// Ops whose presence means ONNX Runtime's constant folding has work to do.
const FOLDABLE: &[&str] = &["Constant", "Shape", "Size", "Identity", "Dropout", "ConstantOfShape"];

/// Prepares `model` (see the module docs); the model is returned unchanged, with an empty
/// report, when it needs nothing.
pub fn prepare(model: &Model) -> Result<(Model, Preparation)> {
    let mut report = Preparation::default();
    let mut m = match opset::upgrade(model)? {
        Some((up, r)) => {
            report.steps.push(format!(
                "opset {} → {} ({})",
                r.from,
                r.to,
                if r.rewritten.is_empty() {
                    "no node needed rewriting".to_owned()
                } else {
                    r.rewritten.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
                }
            ));
            report.opset_upgraded = Some((r.from, r.to));
            report.rewritten = r.rewritten;
            up
        }
        None => model.clone(),
    };
    let inits: std::collections::HashSet<String> = m.graph().initializer.iter().filter_map(|t| t.name.clone()).collect();
    let before = m.graph().input.len();
    if m.proto.ir_version.unwrap_or(0) >= 4
        && let Some(g) = m.proto.graph.as_mut()
    {
        g.input.retain(|i| !i.name.as_ref().is_some_and(|n| inits.contains(n)));
    }
    report.initializer_inputs_removed = before - m.graph().input.len();
    if report.initializer_inputs_removed > 0 {
        report.steps.push(format!("{} initializers removed from the graph inputs (now constants)", report.initializer_inputs_removed));
    }
    if count(&m, FOLDABLE) > 0 {
        let constants = count(&m, &["Constant"]);
        let nodes = m.graph().node.len();
        let folded = runtime::optimized_model(&m, &SessionConfig { optimization: OptimizationLevel::Basic, intra_threads: 1, ..SessionConfig::default() })?;
        report.constant_nodes_to_initializers = constants.saturating_sub(count(&folded, &["Constant"]));
        report.nodes_folded = nodes.saturating_sub(folded.graph().node.len());
        report.shape_nodes_left = count(&folded, &["Shape", "Size"]);
        report.steps.push(format!(
            "constant folding for the declared input shapes: {} nodes removed, {} Constant weights now initializers, {} Shape/Size nodes left (dynamic dims)",
            report.nodes_folded, report.constant_nodes_to_initializers, report.shape_nodes_left
        ));
        m = folded;
    }
    if let Some((fused, n)) = FuseHardSwish.apply(&m)? {
        report.hard_swishes_fused = n;
        report.steps.push(format!("{n} hard-swishes written out as Add/Clip/Mul/Div now one HardSwish op"));
        m = fused;
    }
    if let Some((rewritten, n)) = SquareByMul.apply(&m)? {
        report.squares_as_mul = n;
        report.steps.push(format!("{n} Pow(x, 2) now Mul(x, x) (same values, one multiply instead of the general power kernel)"));
        m = rewritten;
    }
    Ok((m, report))
}
