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

/// A random hex string of `bytes` bytes (ids, receipts).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}
