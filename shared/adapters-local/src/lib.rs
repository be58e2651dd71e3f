//! Local adapters for `tamp serve` and tests: a folder as the object store, SQLite as the
//! metadata store, an in-process queue and event bus, and a subprocess batch runner.

pub mod batch;
pub mod bus;
pub mod folder;
pub mod queue;
pub mod sqlite;

pub use batch::ProcessRunner;
pub use bus::LocalBus;
pub use folder::FolderStore;
pub use queue::MemoryQueue;
pub use sqlite::SqliteStore;

pub use tamp_domain::ids::random_hex;
