//! The pre-flight compatibility table.
