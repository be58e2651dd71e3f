//! A folder as the object store (S3's part locally). Writes go to a temporary file and are
//! renamed into place, so readers never see half an object; `put_if_absent` uses a hard
//! link, which fails atomically when the key exists. Presigned URLs point at the local API's
//! `/objects/<key>` route with an expiry and an HMAC signature over key and expiry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tamp_domain::job::Timestamp;
use tamp_ports::{ObjectMeta, ObjectStore, PortError, PutOutcome, Result, check_key};

#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
    /// Base URL of the API serving `/objects/…` (for presigned URLs).
    base_url: String,
    secret: Vec<u8>,
}

/// What is escaped in a path segment of a presigned URL: everything but unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Longest a presigned URL may live.
pub const MAX_PRESIGN: Duration = Duration::from_secs(15 * 60);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PortError + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            PortError::NotFound(path.display().to_string())
        } else {
            PortError::Unavailable(format!("{}: {e}", path.display()))
        }
    }
}

impl FolderStore {
    pub fn new(root: impl Into<PathBuf>, base_url: impl Into<String>, secret: &[u8]) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root, base_url: base_url.into(), secret: secret.to_vec() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file behind a key (for the local API and workers on the same machine).
    pub fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn mac(&self, method: &str, key: &str, expires: Timestamp) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("{method}\n{key}\n{expires}").as_bytes());
        mac
    }

    /// Checks a presigned URL's signature (for `method`: GET or PUT) and expiry.
    pub fn verify(&self, method: &str, key: &str, expires: Timestamp, signature: &str, now: Timestamp) -> bool {
        if now > expires {
            return false;
        }
        let Ok(sig) = hex::decode(signature) else { return false };
        self.mac(method, key, expires).verify_slice(&sig).is_ok()
    }

    fn presign(&self, method: &str, route: &str, key: &str, ttl: Duration, now: Timestamp) -> Result<String> {
        check_key(key)?;
        if ttl > MAX_PRESIGN {
            return Err(PortError::Invalid(format!("presigned URLs live at most {} s", MAX_PRESIGN.as_secs())));
        }
        let expires = now + ttl.as_secs();
        let sig = hex::encode(self.mac(method, key, expires).finalize().into_bytes());
        // The key is signed as it is and sent percent-encoded (a name with a space must still
        // verify once a client has encoded it); the API decodes the path before verifying.
        let path: String = key.split('/').map(|seg| percent_encoding::utf8_percent_encode(seg, SEGMENT).to_string()).collect::<Vec<_>>().join("/");
        Ok(format!("{}/{route}{path}?expires={expires}&signature={sig}", self.base_url.trim_end_matches('/')))
    }

    fn staging(&self, path: &Path) -> Result<PathBuf> {
        let dir = path.parent().ok_or_else(|| PortError::Invalid(path.display().to_string()))?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(dir.join(format!(".{}.tmp-{}", path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()), crate::random_hex(6))))
    }
}

impl tamp_ports::SignedLinks for FolderStore {
    fn verify(&self, method: &str, key: &str, expires: Timestamp, signature: &str, now: Timestamp) -> bool {
        FolderStore::verify(self, method, key, expires, signature, now)
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.clone()
    }
}

#[async_trait]
impl ObjectStore for FolderStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(key)?;
        let tmp = self.staging(&path)?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome> {
        let path = self.path(key)?;
        let tmp = self.staging(&path)?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn put_file(&self, key: &str, src: &Path) -> Result<()> {
        let path = self.path(key)?;
        let tmp = self.staging(&path)?;
        std::fs::copy(src, &tmp).map_err(io(src))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        std::fs::read(&path).map_err(io(&path))
    }

    async fn get_to_file(&self, key: &str, dst: &Path) -> Result<()> {
        let path = self.path(key)?;
        std::fs::copy(&path, dst).map_err(io(&path)).map(|_| ())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
                use std::os::unix::fs::MetadataExt;
                Ok(Some(ObjectMeta { key: key.to_owned(), size: m.len(), version: format!("{mtime}-{}-{}", m.len(), m.ino()) }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // Walk from the deepest folder the prefix names; keep keys that start with it.
        let start = prefix.rfind('/').map_or(self.root.clone(), |i| self.root.join(&prefix[..i]));
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue; // staging files and hidden folders are not objects
                }
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    let key = rel.to_string_lossy().into_owned();
                    if key.starts_with(prefix) {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        // Empty folders are key prefixes: they go with their last object (S3 keeps no folders),
        // so a deleted project leaves no names behind.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if std::fs::remove_dir(d).is_err() {
                break; // not empty (or gone)
            }
            dir = d.parent();
        }
        Ok(())
    }

    async fn presign_get(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<String> {
        self.presign("GET", "objects/", key, ttl, now)
    }

    async fn presign_put(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<String> {
        // Uploads go through the API's upload route (which triggers ingest for recipe.yaml).
        self.presign("PUT", "", key, ttl, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path(), "http://127.0.0.1:1", b"secret").unwrap();
        tamp_ports::conformance::object_store(&store).await;
    }

    #[tokio::test]
    async fn presigned_urls_verify_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path(), "http://h", b"secret").unwrap();
        let url = store.presign_get("a/b.onnx", Duration::from_secs(60), 100).await.unwrap();
        let sig = url.split("signature=").nth(1).unwrap();
        assert!(store.verify("GET", "a/b.onnx", 160, sig, 150));
        assert!(!store.verify("GET", "a/b.onnx", 160, sig, 161), "expired");
        assert!(!store.verify("GET", "a/c.onnx", 160, sig, 150), "other key");
        assert!(!store.verify("GET", "a/b.onnx", 999, sig, 150), "forged expiry");
        assert!(!store.verify("PUT", "a/b.onnx", 160, sig, 150), "a download link is not an upload link");
    }
}
