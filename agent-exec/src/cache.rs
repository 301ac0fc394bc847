//! The compiled-component cache.
//!
//! Compiling a component takes far longer than a request should; loading a compiled one
//! is a read and a map. Entries live in `<home>/cache/components/`, named by the
//! component's SHA-256 and the engine's [fingerprint](crate::engine::fingerprint), so a new
//! component or a different engine configuration never loads a stale entry.
//!
//! An entry is the serialized component followed by an 8-byte trailer: a magic tag and the
//! CRC-32 of what precedes it. Entries are written to a temporary file and renamed into
//! place, so readers see a whole entry or none. An entry whose trailer is missing or whose
//! checksum does not match (a torn write, a flipped bit, a truncated file) is never handed
//! to wasmtime: it is compiled again and replaced.

use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Marks the trailer of a cache entry (version 1 of this format).
const TRAILER_MAGIC: &[u8; 4] = b"acc1";
const TRAILER_LEN: usize = 8;

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

/// Load the component from its cache entry, or compile `wasm` and write the entry.
pub fn load_or_compile(engine: &Engine, entry: &Path, wasm: &[u8]) -> Result<Loaded, CacheError> {
    let rejected_entry = match std::fs::read(entry) {
        Ok(bytes) => match verified(&bytes) {
            Ok(serialized) => {
                // SAFETY: the bytes were produced by `Component::serialize` under an engine
                // with the same configuration fingerprint, and the checksum proves they
                // are unchanged since they were written by this cache.
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
    let component =
        Component::new(engine, wasm).map_err(|e| CacheError::Compile(format!("{e:#}")))?;
    let serialized = component
        .serialize()
        .map_err(|e| CacheError::Compile(format!("cannot serialize: {e:#}")))?;
    write_entry(entry, &serialized).map_err(|source| CacheError::Write {
        path: entry.to_owned(),
        source,
    })?;
    Ok(Loaded {
        component,
        cache_hit: false,
        rejected_entry,
    })
}

/// The serialized component inside a cache entry, if the trailer checks out.
fn verified(entry: &[u8]) -> Result<&[u8], String> {
    let Some(split) = entry.len().checked_sub(TRAILER_LEN) else {
        return Err(format!("truncated ({} bytes)", entry.len()));
    };
    let (body, trailer) = entry.split_at(split);
    if &trailer[..4] != TRAILER_MAGIC {
        return Err("no trailer (torn or foreign file)".into());
    }
    let stored = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, actual {actual:08x})"
        ));
    }
    Ok(body)
}

/// Write `serialized` plus its trailer to `entry`, atomically (temp file, then rename).
fn write_entry(entry: &Path, serialized: &[u8]) -> std::io::Result<()> {
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
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(serialized)?;
        file.write_all(TRAILER_MAGIC)?;
        file.write_all(&crc32fast::hash(serialized).to_le_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, entry)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_detects_corruption_and_truncation() {
        let body = b"serialized component".to_vec();
        let mut entry = body.clone();
        entry.extend_from_slice(TRAILER_MAGIC);
        entry.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        assert_eq!(verified(&entry).expect("intact"), &body[..]);

        let mut flipped = entry.clone();
        flipped[3] ^= 0x40;
        assert!(
            verified(&flipped)
                .expect_err("flipped")
                .contains("checksum")
        );
        assert!(verified(&entry[..entry.len() - 3]).is_err());
        assert!(verified(b"short").is_err());
    }
}
