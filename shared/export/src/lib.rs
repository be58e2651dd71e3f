//! Tamp's exporters: ONNX graphs written for other runtimes, and the pre-flight check that
//! says, before any compute, which nodes a requested runtime cannot run.

pub mod compat;
pub mod tflite;

use serde::{Deserialize, Serialize};

/// One thing a runtime cannot take: where, what, why, and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The node (or input / initializer) name; empty for model-wide problems.
    pub node: String,
    pub op: String,
    /// The runtime, once the problem is attached to one.
    #[serde(default)]
    pub runtime: String,
    pub why: String,
    pub fix: String,
}

impl Problem {
    pub fn at(node: &str, op: &str, why: &str, fix: &str) -> Self {
        Self { node: node.to_owned(), op: op.to_owned(), runtime: String::new(), why: why.to_owned(), fix: fix.to_owned() }
    }

    pub fn model(why: String) -> Self {
        Self { node: String::new(), op: String::new(), runtime: String::new(), why, fix: "repair the model".into() }
    }

    pub fn on(mut self, runtime: &str) -> Self {
        runtime.clone_into(&mut self.runtime);
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rt = if self.runtime.is_empty() { String::new() } else { format!("{}: ", self.runtime) };
        if self.node.is_empty() {
            write!(f, "{rt}{} ({})", self.why, self.fix)
        } else {
            write!(f, "{rt}node '{}' ({}): {} — {}", self.node, self.op, self.why, self.fix)
        }
    }
}
