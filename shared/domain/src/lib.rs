//! Tamp's domain: the recipe (policy) schema and its validation, compression jobs with their
//! state machine and planner, the events Tamp publishes, random ids, and the typed results of a
//! run (candidates, outcome, artifact record, manifest). No I/O: callers read files,
//! talk to stores and pass the clock in.

pub mod ids;
pub mod job;
pub mod recipe;
pub mod results;

pub use job::{Effect, EventKind, Job, JobState, Signal, StageState};
pub use recipe::{Recipe, RecipeError};
