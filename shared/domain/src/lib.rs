//! Tamp's domain: the recipe (policy) schema and its validation. No I/O: callers read files
//! and hand this crate text. The job/stage state machine, ids and events join it with the
//! control plane.

pub mod recipe;

pub use recipe::{Recipe, RecipeError};
