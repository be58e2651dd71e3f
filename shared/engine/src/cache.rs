//! The one place Tamp caches things between runs: `$TAMP_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/tamp`, else `~/.cache/tamp`. `TAMP_CACHE_DIR=off` turns caching off.
//! Sensitivity curves live in `<dir>/sensitivity/`, speed verdicts in `<dir>/speed/`,
//! per-layer kernel timings in `<dir>/kernels/` ([`load`]/[`store`]), and a user-installed ONNX Runtime may live
//! in `<dir>/ort/`; the Makefile keeps the trained reference CNN in `<dir>/models/` and its
//! build folder in `<dir>/target/`.

use std::path::PathBuf;

/// The environment variable that moves (or, set to `off`, disables) the cache.
pub const ENV: &str = "TAMP_CACHE_DIR";

/// The cache folder, or `None` when caching is off or no home folder is known.
pub fn dir() -> Option<PathBuf> {
    dir_from(|k| std::env::var_os(k))
}

fn dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty());
    match set(ENV) {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => set("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("tamp")).or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache/tamp"))),
    }
}

/// The folder for one kind of cached thing (`sensitivity`, …).
pub fn subdir(kind: &str) -> Option<PathBuf> {
    dir().map(|d| d.join(kind))
}

/// A cached JSON value of one kind, by a key hashed with sha256; `None` when caching is off,
/// the entry is missing or it no longer parses (a stale format is recomputed, not an error).
pub fn load<T: serde::de::DeserializeOwned>(kind: &str, key: &str) -> Option<T> {
    std::fs::read(entry(kind, key)?).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Stores `value` for [`load`]; written to a temporary file and renamed, so a reader never
/// sees half a file. Failing to cache is never an error.
pub fn store<T: serde::Serialize>(kind: &str, key: &str, value: &T) {
    let Some(path) = entry(kind, key) else { return };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if serde_json::to_vec(value).is_ok_and(|b| std::fs::write(&tmp, b).is_ok()) {
        let _ = std::fs::rename(&tmp, &path);
    }
}

fn entry(kind: &str, key: &str) -> Option<PathBuf> {
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    subdir(kind).map(|d| d.join(format!("{digest}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_wins_then_xdg_then_home_and_off_disables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).into());
        assert_eq!(dir_from(env(&[(ENV, "/c"), ("HOME", "/h")])), Some(PathBuf::from("/c")));
        assert_eq!(dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])), Some(PathBuf::from("/x/tamp")));
        assert_eq!(dir_from(env(&[("HOME", "/h")])), Some(PathBuf::from("/h/.cache/tamp")));
        assert_eq!(dir_from(env(&[(ENV, "off"), ("HOME", "/h")])), None);
        assert_eq!(dir_from(env(&[(ENV, ""), ("HOME", "/h")])), Some(PathBuf::from("/h/.cache/tamp")));
        assert_eq!(dir_from(env(&[])), None);
    }
}
