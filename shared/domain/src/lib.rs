//! Tamp's domain: the recipe (policy) schema and its validation, compression jobs with their
//! state machine and planner, the events Tamp publishes, and random ids. No I/O: callers read files,
//! talk to stores and pass the clock in.

pub mod ids;
pub mod job;
pub mod recipe;

pub use job::{Effect, EventKind, Job, JobState, Signal, StageState};
pub use recipe::{Recipe, RecipeError};
