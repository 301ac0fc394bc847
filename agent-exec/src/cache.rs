//! The compiled-component cache.
//!
//! Compiling a component takes far longer than a request should; loading a compiled one
//! is a read and a map. Entries live in `<home>/cache/components/`, named by the
//! component's SHA-256 and the engine's [fingerprint](crate::engine::fingerprint), so a new
//! component or a different engine configuration never loads a stale entry.
//!
//! An entry is the serialized component followed by a trailer: the SHA-256 (hex) of the
//! component it was compiled from, a magic tag, and the CRC-32 of everything before the
//! CRC. Entries are written to a temporary file and renamed into place, so readers see a
//! whole entry or none. Deserializing is `unsafe` (wasmtime trusts the bytes to be its own
//! output for this very component), so an entry is handed to wasmtime only when its
//! checksum matches (not torn, flipped or truncated) *and* the hash inside it is the hash
//! of the component being run: another component's valid entry copied or renamed into its
//! place is refused, compiled again and replaced.

use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Marks the trailer of a cache entry (version 2 of this format: with the component hash).
const TRAILER_MAGIC: &[u8; 4] = b"acc2";
/// The component's SHA-256 in hex.
const HASH_LEN: usize = 64;
const TRAILER_LEN: usize = HASH_LEN + 8;

/// A loaded component and how it was obtained.
pub struct Loaded {
    /// The component, ready to instantiate.
    pub component: Component,
    /// True when it came from the cache; false when it was compiled now.
    pub cache_hit: bool,
    /// Why an existing entry was rejected, if one was.
    pub rejected_entry: Option<String>,
}

/// Why the cache could not provide a component.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The component does not compile (not a component, or invalid).
    #[error("{0}")]
    Compile(String),
    /// There is no usable entry and the caller asked not to compile ([`OnMiss::Refuse`]).
    #[error("the component is not compiled yet{}", .rejected.as_ref().map_or(String::new(), |r| format!(" (its entry was rejected: {r})")))]
    Missing {
        /// Why an existing entry was rejected, if one was.
        rejected: Option<String>,
    },
    /// The cache directory or entry could not be written.
    #[error("cannot write compiled-component cache entry {}: {source}", path.display())]
    Write {
        /// The entry's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// The cache entry path for a component with this hash under this engine.
pub fn entry_path(cache_dir: &Path, component_sha256: &str, engine: &Engine) -> PathBuf {
    cache_dir.join(format!(
        "{component_sha256}-{}.cwasm",
        crate::engine::fingerprint(engine)
    ))
}

/// What to do when the cache has no usable entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMiss {
    /// Compile the component and write its entry.
    Compile,
    /// Fail with [`CacheError::Missing`]: the caller compiles it elsewhere, in its own time.
    Refuse,
}

/// Load the component from its cache entry, or (per `on_miss`) compile `wasm` (whose
/// SHA-256 in hex is `component_sha256`) and write the entry.
pub fn load_or_compile(
    engine: &Engine,
    entry: &Path,
    wasm: &[u8],
    component_sha256: &str,
    on_miss: OnMiss,
) -> Result<Loaded, CacheError> {
    let rejected_entry = match std::fs::read(entry) {
        Ok(bytes) => match verified(&bytes, component_sha256) {
            Ok(serialized) => {
                // SAFETY: the bytes were produced by `Component::serialize` from this very
                // component (the hash inside the entry is its hash) under an engine with the
                // same configuration fingerprint, and the checksum proves they are unchanged
                // since they were written by this cache.
                match unsafe { Component::deserialize(engine, serialized) } {
                    Ok(component) => {
                        return Ok(Loaded {
                            component,
                            cache_hit: true,
                            rejected_entry: None,
                        });
                    }
                    Err(e) => Some(format!("wasmtime refused it: {e}")),
                }
            }
            Err(why) => Some(why),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("unreadable: {e}")),
    };
    if on_miss == OnMiss::Refuse {
        return Err(CacheError::Missing {
            rejected: rejected_entry,
        });
    }
    let component =
        Component::new(engine, wasm).map_err(|e| CacheError::Compile(format!("{e:#}")))?;
    let serialized = component
        .serialize()
        .map_err(|e| CacheError::Compile(format!("cannot serialize: {e:#}")))?;
    write_entry(entry, &serialized, component_sha256).map_err(|source| CacheError::Write {
        path: entry.to_owned(),
        source,
    })?;
    Ok(Loaded {
        component,
        cache_hit: false,
        rejected_entry,
    })
}

/// The serialized component inside a cache entry, if the trailer checks out and says the
/// entry was compiled from the component whose hash is `component_sha256`.
fn verified<'a>(entry: &'a [u8], component_sha256: &str) -> Result<&'a [u8], String> {
    let Some(split) = entry.len().checked_sub(TRAILER_LEN) else {
        return Err(format!("truncated ({} bytes)", entry.len()));
    };
    let (body, trailer) = entry.split_at(split);
    let (hash, trailer) = trailer.split_at(HASH_LEN);
    if &trailer[..4] != TRAILER_MAGIC {
        return Err("no trailer (torn, foreign or older-format file)".into());
    }
    let stored = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let actual = crc32fast::hash(&entry[..split + HASH_LEN]);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, actual {actual:08x})"
        ));
    }
    if hash != component_sha256.as_bytes() {
        return Err(format!(
            "compiled from another component (sha256 {}, expected {component_sha256})",
            String::from_utf8_lossy(hash)
        ));
    }
    Ok(body)
}

/// Write `serialized` plus its trailer to `entry`, atomically (temp file, then rename).
fn write_entry(entry: &Path, serialized: &[u8], component_sha256: &str) -> std::io::Result<()> {
    let dir = entry.parent().unwrap_or(Path::new("."));
    agent_contract::home::create_private_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry"),
        std::process::id()
    ));
    let result = (|| {
        let hash = component_sha256.as_bytes();
        if hash.len() != HASH_LEN {
            return Err(std::io::Error::other(
                "the component hash is not a SHA-256 in hex",
            ));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(serialized);
        crc.update(hash);
        let mut file = private_file(&tmp)?;
        file.write_all(serialized)?;
        file.write_all(hash)?;
        file.write_all(TRAILER_MAGIC)?;
        file.write_all(&crc.finalize().to_le_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, entry)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A new file only its owner can read (the cache holds what agents run).
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn trailer_detects_corruption_truncation_and_another_component() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entry.cwasm");
        let body = b"serialized component".to_vec();
        write_entry(&path, &body, SHA).expect("write");
        let entry = std::fs::read(&path).expect("read");
        assert_eq!(verified(&entry, SHA).expect("intact"), &body[..]);

        let mut flipped = entry.clone();
        flipped[3] ^= 0x40;
        assert!(
            verified(&flipped, SHA)
                .expect_err("flipped")
                .contains("checksum")
        );
        let other = SHA.replace('0', "f");
        assert!(
            verified(&entry, &other)
                .expect_err("another component")
                .contains("another component")
        );
        assert!(verified(&entry[..entry.len() - 3], SHA).is_err());
        assert!(verified(b"short", SHA).is_err());
    }
}
