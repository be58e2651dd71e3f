//! Random identifiers: job, event, token and artifact-link ids, receipts and secrets.

/// A random hex string of `bytes` bytes from the thread's CSPRNG (`rand::rng()`).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}
