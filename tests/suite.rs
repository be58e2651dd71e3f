//! The end-to-end tests in one binary (`cargo test -p tamp-e2e --test suite`; a file's tests
//! by its module name, e.g. `-- distill::`). `tests/aws.rs` is its own binary: it installs a
//! process-wide tracing subscriber to check what the Lambda handlers log.

mod support;

mod distill;
mod e2e;
mod export;
mod fuzz;
mod infra;
mod metrics;
mod notebooks;
mod prd_api;
mod report;
mod search;
mod security;
mod serve;
mod techniques;
mod tidy;
mod training;
mod ui;
mod zoo;
