//! The compiled-component cache.
//!
//! Compiling a component takes far longer than a request should; loading a compiled one
//! should cost the same whatever the component's size. So a request that finds its entry
//! reads neither the component nor the entry: it `stat`s the component, reads the entry's
//! fixed-size trailer, and maps the entry (`Component::deserialize_file`), so that code and
//! a pre-initialized memory image (an interpreter's heap) are paged in copy-on-write as
//! they are touched, not read, checksummed and copied on every run.
//!
//! # Entries
//!
//! `<home>/cache/components/<path key>-<engine fingerprint>.cwasm`: one entry per component
//! path (the SHA-256 of the path's text) and engine [fingerprint](crate::engine::fingerprint).
//! An entry is the serialized component followed by a [`Trailer`]: the size of the body
//! and its CRC-32, the component's SHA-256, the component file's identity when it was
//! hashed (device, inode, size, mtime, ctime) and when that was, a magic tag, and the
//! trailer's own CRC-32.
//!
//! # Why an entry is trusted, and when it is not
//!
//! Deserializing is `unsafe`: wasmtime trusts the bytes to be its own output for this very
//! component. An entry is handed to wasmtime on the fast path only when all of these hold:
//!
//! 1. **It is whole and unmodified since this cache wrote it.** Entries are written to a
//!    temporary file, synced and renamed into place, so a reader sees a whole entry or
//!    none. Before the rename the writer sets the file's mtime to a fixed seal
//!    ([`SEAL_MTIME_S`]); any later write to the file (a flip, a truncation, an append, a
//!    copy over it) sets its mtime to the time of that write, so an entry whose mtime is
//!    not the seal is not trusted. Its size must be the body's size in the trailer plus
//!    the trailer, and the trailer's checksum must match.
//! 2. **It was compiled from the component as it is now.** The trailer's file identity is
//!    the component's current one, and it was recorded at least [`RACY_WINDOW_NS`] after
//!    the component's last change (mtime and ctime): a file changed within the window of
//!    its hashing could have changed again within one timestamp tick, unseen (git's "racily
//!    clean" rule). ctime cannot be set back by the file's owner, so an edit that restores
//!    size and mtime is still seen.
//! 3. **wasmtime accepts it**: its header names this engine's configuration and version
//!    and CPU features this host has.
//!
//! Otherwise the slow path reads and hashes the component (checking the manifest's pin),
//! reads the entry whole and checks the body's CRC-32 and the trailer's component hash.
//! An entry that passes is the same component re-installed, touched, or hashed within the
//! window: it is used, and stamped again with the component's current identity (a copy,
//! renamed into place) once the window has passed, so the next run takes the fast path.
//! An entry that fails is rejected (the reason is logged), compiled again and replaced.
//!
//! What the fast path does not re-check is the body's bytes of an entry whose seal is
//! intact: only a process running as the user, who owns the 0700 cache directory, could
//! write them and restore the seal, and such a process can change the agent itself.
//!
//! # Compiling
//!
//! A request only [`load`]s: on a miss it fails with [`CacheError::Missing`], and the
//! component is compiled by `agent-compile` ([`crate::compile`]), outside the request's
//! deadline, which calls [`compile`] (built with the `compiler` feature only). Compiles of
//! one entry are serialized by a lock file beside it, and a compiler that got the lock
//! looks again first, so concurrent first runs of one component compile it once.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use agent_contract::Manifest;
use agent_contract::manifest::ComponentError;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Marks the trailer of a cache entry (version 3 of this format: identity and seal).
const TRAILER_MAGIC: &[u8; 4] = b"acc3";
/// The component's SHA-256 in hex.
const HASH_LEN: usize = 64;
/// body length, body CRC, 5 identity fields, hashed-at, hash, magic, trailer CRC.
const TRAILER_LEN: usize = 8 + 4 + 5 * 8 + 8 + HASH_LEN + 4 + 4;
/// The mtime every entry is given when written (2001-09-09, seconds only, which every
/// filesystem keeps): a write to the file after that replaces it with the write's time.
pub const SEAL_MTIME_S: i64 = 1_000_000_000;
/// How long after its last change a component must have been hashed for its identity to
/// stand for its contents (well over any filesystem's timestamp granularity).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// A loaded component and how it was obtained.
pub struct Loaded {
    /// The component, ready to instantiate.
    pub component: Component,
    /// True when it came from the cache; false when it was compiled now.
    pub cache_hit: bool,
    /// Why an existing entry was rejected, if one was.
    pub rejected_entry: Option<String>,
    /// SHA-256 of the component file (hex), as the entry was checked against.
    pub sha256_hex: String,
}

/// Why the cache could not provide a component.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The component file could not be read, or differs from the manifest's pin.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The component does not compile (not a component, or invalid).
    #[error("{0}")]
    Compile(String),
    /// There is no usable entry: the component is to be compiled first.
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

/// The cache entry path for the component at `component` in a request engine that meters
/// fuel or not.
pub fn entry_path(cache_dir: &Path, component: &Path, fuel: bool) -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = Sha256::digest(component.as_os_str().as_encoded_bytes());
    let key = agent_contract::manifest::to_hex(&key[..PATH_KEY_LEN / 2]);
    cache_dir.join(format!(
        "{key}-{}{ENTRY_SUFFIX}",
        crate::engine::fingerprint(fuel)
    ))
}

/// An entry's name: `<path key>-<engine fingerprint>` and this suffix.
const ENTRY_SUFFIX: &str = ".cwasm";
/// The path key's length, in hex digits (the first 8 bytes of the path's SHA-256).
const PATH_KEY_LEN: usize = 16;
/// What an entry's name takes to name its lock file.
#[cfg_attr(not(feature = "compiler"), allow(dead_code))]
const LOCK_SUFFIX: &str = ".lock";
/// What an entry's temporary file is named, besides the entry's name and the writer's pid:
/// `.<entry>.<pid>.tmp`.
const TEMP_SUFFIX: &str = ".tmp";

/// The manifest's component from its entry at `entry`, loaded into `engine` (a request
/// engine, without a compiler); [`CacheError::Missing`] when there is no entry to trust.
pub fn load(engine: &Engine, entry: &Path, manifest: &Manifest) -> Result<Loaded, CacheError> {
    match lookup(engine, entry, manifest)? {
        Lookup::Hit(loaded) => Ok(loaded),
        Lookup::Miss(missed) => Err(CacheError::Missing {
            rejected: missed.rejected,
        }),
    }
}

/// [`load`], and on a miss compile the component (with a compiler engine of the same
/// configuration, `fuel` or not), write its entry at `entry` and load that.
#[cfg(feature = "compiler")]
pub fn compile(
    engine: &Engine,
    entry: &Path,
    manifest: &Manifest,
    fuel: bool,
) -> Result<Loaded, CacheError> {
    let missed = match lookup(engine, entry, manifest)? {
        Lookup::Hit(loaded) => return Ok(loaded),
        Lookup::Miss(missed) => missed,
    };
    let write_err = |source| CacheError::Write {
        path: entry.to_owned(),
        source,
    };
    let dir = entry.parent().unwrap_or(Path::new("."));
    agent_contract::home::create_private_dir_all(dir).map_err(write_err)?;
    // One compile per entry at a time; whoever waited looks again before compiling.
    let lock = lock_path(entry);
    let lock = private_file(&lock, false).map_err(write_err)?;
    lock.lock().map_err(write_err)?;
    let missed = match lookup(engine, entry, manifest)? {
        Lookup::Hit(loaded) => {
            return Ok(Loaded {
                rejected_entry: missed.rejected,
                ..loaded
            });
        }
        Lookup::Miss(again) => Missed {
            rejected: again.rejected.or(missed.rejected),
            ..again
        },
    };
    let (wasm, identity, hashed_at_ns) = match missed.component {
        Some(read) => read,
        None => read_component(manifest)?,
    };
    let compiler = crate::engine::build_compiler(fuel)
        .map_err(|e| CacheError::Compile(format!("engine: {e:#}")))?;
    let serialized = Component::new(&compiler, &wasm.bytes)
        .and_then(|c| c.serialize())
        .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
    let trailer = Trailer {
        body_len: serialized.len() as u64,
        body_crc: crc32fast::hash(&serialized),
        identity,
        hashed_at_ns,
        sha256_hex: wasm.sha256_hex,
    };
    write_entry(entry, &serialized, &trailer).map_err(write_err)?;
    let sha256_hex = trailer.sha256_hex;
    drop(lock);
    remove_stale_entries(dir);
    // The compiler engine's component cannot be instantiated in the request's engine:
    // load the entry just written, as a hit would.
    let component = deserialize(engine, entry)
        .map_err(|why| CacheError::Compile(format!("the fresh entry does not load: {why}")))?;
    Ok(Loaded {
        component,
        cache_hit: false,
        rejected_entry: missed.rejected,
        sha256_hex,
    })
}

/// What a look in the cache found.
enum Lookup {
    Hit(Loaded),
    Miss(Missed),
}

/// A miss: why an entry was rejected, and the component as read, when it was.
struct Missed {
    rejected: Option<String>,
    // What the compile step reuses: a request, built without it, only reports the miss.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    component: Option<(agent_contract::manifest::ComponentBytes, Identity, i64)>,
}

fn lookup(engine: &Engine, entry: &Path, manifest: &Manifest) -> Result<Lookup, CacheError> {
    let identity = Identity::of(&manifest.component)?;
    let hit = |component, sha256_hex: &str| {
        Lookup::Hit(Loaded {
            component,
            cache_hit: true,
            rejected_entry: None,
            sha256_hex: sha256_hex.to_owned(),
        })
    };
    let sealed = match Sealed::open(entry) {
        Ok(Some(sealed)) => sealed,
        Ok(None) => {
            return Ok(Lookup::Miss(Missed {
                rejected: None,
                component: None,
            }));
        }
        Err(why) => {
            return Ok(Lookup::Miss(Missed {
                rejected: Some(why),
                component: None,
            }));
        }
    };
    // The fast path: the component is as it was when hashed, and that was not racy.
    if sealed.trailer.identity == identity && !sealed.trailer.racy() {
        manifest.check_pin(&sealed.trailer.sha256_hex)?;
        return Ok(match sealed.deserialize(engine) {
            Ok(component) => hit(component, &sealed.trailer.sha256_hex),
            Err(why) => Lookup::Miss(Missed {
                rejected: Some(why),
                component: None,
            }),
        });
    }
    // The slow path: hash the component, check the whole entry against it.
    let (wasm, identity, hashed_at_ns) = read_component(manifest)?;
    let body = match sealed.verified_body(&wasm.sha256_hex) {
        Ok(body) => body,
        Err(why) => {
            return Ok(Lookup::Miss(Missed {
                rejected: Some(why),
                component: Some((wasm, identity, hashed_at_ns)),
            }));
        }
    };
    let stamped = Trailer {
        identity,
        hashed_at_ns,
        ..sealed.trailer.clone()
    };
    // Stamp it with the component's identity now, unless that would be racy again (the
    // next run then hashes once more). A failed stamp only costs the next run the same.
    if !stamped.racy() {
        let _ = write_entry(entry, &body, &stamped);
    }
    Ok(match sealed.deserialize(engine) {
        Ok(component) => hit(component, &wasm.sha256_hex),
        Err(why) => Lookup::Miss(Missed {
            rejected: Some(why),
            component: Some((wasm, identity, hashed_at_ns)),
        }),
    })
}

/// The component read and hashed (and checked against its pin), its identity, and when
/// the reading started.
fn read_component(
    manifest: &Manifest,
) -> Result<(agent_contract::manifest::ComponentBytes, Identity, i64), CacheError> {
    let hashed_at_ns = now_ns();
    let identity = Identity::of(&manifest.component)?;
    let wasm = manifest.read_component()?;
    Ok((wasm, identity, hashed_at_ns))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What `stat` says about a component file: the same identity, the same contents (see
/// the module's docs for when that holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Identity {
    fn of(path: &Path) -> Result<Identity, ComponentError> {
        let meta = std::fs::metadata(path).map_err(|source| ComponentError::Read {
            path: path.to_owned(),
            source,
        })?;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Ok(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// An entry's trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trailer {
    body_len: u64,
    body_crc: u32,
    identity: Identity,
    hashed_at_ns: i64,
    sha256_hex: String,
}

impl Trailer {
    /// The component changed too close to its hashing for its identity to vouch for it.
    fn racy(&self) -> bool {
        let changed = self.identity.mtime_ns.max(self.identity.ctime_ns);
        changed.saturating_add(RACY_WINDOW_NS) > self.hashed_at_ns
    }

    fn encode(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(TRAILER_LEN);
        t.extend_from_slice(&self.body_len.to_le_bytes());
        t.extend_from_slice(&self.body_crc.to_le_bytes());
        let id = &self.identity;
        for v in [id.dev, id.ino, id.size] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        for v in [id.mtime_ns, id.ctime_ns, self.hashed_at_ns] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.extend_from_slice(self.sha256_hex.as_bytes());
        t.extend_from_slice(TRAILER_MAGIC);
        let crc = crc32fast::hash(&t);
        t.extend_from_slice(&crc.to_le_bytes());
        t
    }

    fn decode(t: &[u8; TRAILER_LEN]) -> Result<Trailer, String> {
        let (fields, crc) = t.split_at(TRAILER_LEN - 4);
        if &fields[fields.len() - 4..] != TRAILER_MAGIC {
            return Err("no trailer (torn, foreign or older-format file)".into());
        }
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let actual = crc32fast::hash(fields);
        if stored != actual {
            return Err(format!(
                "trailer checksum mismatch (stored {stored:08x}, actual {actual:08x})"
            ));
        }
        let u64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&t[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let i64_at = |at: usize| u64_at(at).cast_signed();
        let hash = &t[60..60 + HASH_LEN];
        let sha256_hex = std::str::from_utf8(hash)
            .ok()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or("the trailer's component hash is not hex")?
            .to_owned();
        Ok(Trailer {
            body_len: u64_at(0),
            body_crc: u32::from_le_bytes([t[8], t[9], t[10], t[11]]),
            identity: Identity {
                dev: u64_at(12),
                ino: u64_at(20),
                size: u64_at(28),
                mtime_ns: i64_at(36),
                ctime_ns: i64_at(44),
            },
            hashed_at_ns: i64_at(52),
            sha256_hex,
        })
    }
}

/// An entry whose seal, size and trailer check out, still open.
struct Sealed {
    file: File,
    path: PathBuf,
    trailer: Trailer,
}

impl Sealed {
    /// `Ok(None)` when there is no entry; `Err(why)` when there is one that is not sealed.
    fn open(path: &Path) -> Result<Option<Sealed>, String> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("unreadable: {e}")),
        };
        let meta = file.metadata().map_err(|e| format!("unreadable: {e}"))?;
        if meta.mtime() != SEAL_MTIME_S || meta.mtime_nsec() != 0 {
            return Err(
                "modified since the cache wrote it (its mtime is not the cache's seal)".into(),
            );
        }
        let len = meta.len();
        let Some(at) = len.checked_sub(TRAILER_LEN as u64) else {
            return Err(format!("truncated ({len} bytes)"));
        };
        let mut raw = [0; TRAILER_LEN];
        file.read_exact_at(&mut raw, at)
            .map_err(|e| format!("unreadable trailer: {e}"))?;
        let trailer = Trailer::decode(&raw)?;
        if trailer.body_len != at {
            return Err(format!(
                "truncated or appended to ({len} bytes; the trailer says {})",
                trailer.body_len + TRAILER_LEN as u64
            ));
        }
        Ok(Some(Sealed {
            file,
            path: path.to_owned(),
            trailer,
        }))
    }

    /// The whole body, when its checksum matches and it was compiled from the component
    /// whose hash is `sha256_hex`.
    fn verified_body(&self, sha256_hex: &str) -> Result<Vec<u8>, String> {
        let len = usize::try_from(self.trailer.body_len).map_err(|e| e.to_string())?;
        let mut body = vec![0; len];
        self.file
            .read_exact_at(&mut body, 0)
            .map_err(|e| format!("unreadable: {e}"))?;
        let actual = crc32fast::hash(&body);
        if actual != self.trailer.body_crc {
            return Err(format!(
                "checksum mismatch (stored {:08x}, actual {actual:08x})",
                self.trailer.body_crc
            ));
        }
        if self.trailer.sha256_hex != sha256_hex {
            return Err(format!(
                "compiled from another component (sha256 {}, expected {sha256_hex})",
                self.trailer.sha256_hex
            ));
        }
        Ok(body)
    }

    /// Map the entry into `engine`. The very file checked, through its descriptor, so that
    /// an entry renamed into place meanwhile is not the one mapped.
    fn deserialize(&self, engine: &Engine) -> Result<Component, String> {
        use std::os::fd::AsRawFd;
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        let path = if by_fd.exists() { &by_fd } else { &self.path };
        deserialize(engine, path)
    }
}

fn deserialize(engine: &Engine, path: &Path) -> Result<Component, String> {
    // SAFETY: the entry was written by this cache (its seal is intact, its size and trailer
    // check out) from this very component (identity or hash) for an engine with the same
    // configuration fingerprint; wasmtime checks its own header (version, configuration,
    // CPU features) before using it. See the module's docs for what is trusted.
    unsafe { Component::deserialize_file(engine, path) }
        .map_err(|e| format!("wasmtime refused it: {e:#}"))
}

#[cfg(feature = "compiler")]
fn lock_path(entry: &Path) -> PathBuf {
    let mut lock = entry.as_os_str().to_owned();
    lock.push(LOCK_SUFFIX);
    PathBuf::from(lock)
}

/// Remove from the cache directory `dir` what no engine of this build can use: entries
/// (and their locks) of another engine fingerprint, left by an earlier configuration, and
/// temporary files of compiles whose process is gone (killed while writing). Best effort:
/// a file that cannot be removed is left for the next compile.
#[cfg_attr(not(feature = "compiler"), allow(dead_code))]
fn remove_stale_entries(dir: &Path) {
    let current = [
        crate::engine::fingerprint(false),
        crate::engine::fingerprint(true),
    ];
    let Ok(files) = std::fs::read_dir(dir) else {
        return;
    };
    for file in files.flatten() {
        let name = file.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = if let Some(tmp) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        {
            // A temporary file: stale once no process has its writer's pid.
            tmp.rsplit_once('.')
                .and_then(|(_, pid)| pid.parse::<i32>().ok())
                .is_some_and(|pid| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                        == Err(nix::errno::Errno::ESRCH)
                })
        } else {
            // An entry or its lock: stale when of another fingerprint.
            name.strip_suffix(LOCK_SUFFIX)
                .unwrap_or(name)
                .strip_suffix(ENTRY_SUFFIX)
                .and_then(|n| n.split_once('-'))
                .is_some_and(|(key, fingerprint)| {
                    key.len() == PATH_KEY_LEN
                        && key.bytes().all(|b| b.is_ascii_hexdigit())
                        && !current.iter().any(|c| c == fingerprint)
                })
        };
        if stale {
            let _ = std::fs::remove_file(file.path());
        }
    }
}

/// Write `body` plus its trailer to `entry`, sealed, atomically (temp file, then rename).
fn write_entry(entry: &Path, body: &[u8], trailer: &Trailer) -> std::io::Result<()> {
    let dir = entry.parent().unwrap_or(Path::new("."));
    agent_contract::home::create_private_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}{TEMP_SUFFIX}",
        entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry"),
        std::process::id()
    ));
    let result = (|| {
        if trailer.sha256_hex.len() != HASH_LEN {
            return Err(std::io::Error::other(
                "the component hash is not a SHA-256 in hex",
            ));
        }
        let mut file = private_file(&tmp, true)?;
        file.write_all(body)?;
        file.write_all(&trailer.encode())?;
        let seal = std::time::UNIX_EPOCH + std::time::Duration::from_secs(SEAL_MTIME_S as u64);
        file.set_times(std::fs::FileTimes::new().set_modified(seal))?;
        file.sync_all()?;
        std::fs::rename(&tmp, entry)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A file only its owner can read (the cache holds what agents run); emptied when `truncate`.
fn private_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn stale_entries_and_leftovers_of_dead_compiles_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let current = crate::engine::fingerprint(false);
        let fuel = crate::engine::fingerprint(true);
        let gone = {
            let mut child = std::process::Command::new("true").spawn().expect("true");
            let pid = child.id();
            child.wait().expect("wait");
            pid
        };
        let me = std::process::id();
        let keep = [
            format!("0123456789abcdef-{current}.cwasm"),
            format!("0123456789abcdef-{current}.cwasm.lock"),
            format!("fedcba9876543210-{fuel}.cwasm"),
            format!(".0123456789abcdef-{current}.cwasm.{me}.tmp"),
            "notes.txt".to_owned(),
            "short-c0-x86_64.cwasm".to_owned(),
        ];
        let remove = [
            "0123456789abcdef-c0-x86_64.cwasm".to_owned(),
            "0123456789abcdef-c0-x86_64.cwasm.lock".to_owned(),
            format!(".0123456789abcdef-{current}.cwasm.{gone}.tmp"),
        ];
        for name in keep.iter().chain(&remove) {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        remove_stale_entries(dir.path());
        for name in &keep {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
        for name in &remove {
            assert!(!dir.path().join(name).exists(), "{name} was left");
        }
    }

    fn trailer(body: &[u8]) -> Trailer {
        Trailer {
            body_len: body.len() as u64,
            body_crc: crc32fast::hash(body),
            identity: Identity {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4_000_000_000,
                ctime_ns: 5_000_000_000,
            },
            hashed_at_ns: 9_000_000_000,
            sha256_hex: SHA.into(),
        }
    }

    #[test]
    fn trailers_round_trip_and_a_flipped_byte_is_seen() {
        let t = trailer(b"body");
        let raw: [u8; TRAILER_LEN] = t.encode().try_into().expect("trailer size");
        assert_eq!(Trailer::decode(&raw).expect("intact"), t);
        for at in [0, 20, 60, TRAILER_LEN - 6] {
            let mut flipped = raw;
            flipped[at] ^= 0x10;
            assert!(Trailer::decode(&flipped).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn a_component_hashed_within_the_window_of_its_change_is_racy() {
        let mut t = trailer(b"");
        assert!(!t.racy(), "changed 4 s before hashing");
        t.hashed_at_ns = t.identity.ctime_ns + RACY_WINDOW_NS - 1;
        assert!(t.racy());
    }

    #[test]
    fn entries_are_sealed_and_any_later_write_breaks_the_seal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entry.cwasm");
        let body = b"serialized component".to_vec();
        write_entry(&path, &body, &trailer(&body)).expect("write");
        let sealed = Sealed::open(&path).expect("sealed").expect("present");
        assert_eq!(sealed.verified_body(SHA).expect("intact"), body);
        assert!(
            sealed
                .verified_body(&SHA.replace('0', "f"))
                .expect_err("another component")
                .contains("another component")
        );

        // The same bytes written again: the seal is gone.
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes).expect("rewrite");
        assert!(
            Sealed::open(&path)
                .err()
                .expect("unsealed")
                .contains("seal")
        );

        // A truncated entry with its seal restored: the size gives it away.
        write_entry(&path, &body, &trailer(&body)).expect("write");
        let f = File::options().write(true).open(&path).expect("open");
        f.set_len(bytes.len() as u64 - 3).expect("truncate");
        let seal = std::time::UNIX_EPOCH + std::time::Duration::from_secs(SEAL_MTIME_S as u64);
        f.set_times(std::fs::FileTimes::new().set_modified(seal))
            .expect("reseal");
        assert!(Sealed::open(&path).is_err());
        assert!(
            Sealed::open(&dir.path().join("none"))
                .expect("absent")
                .is_none()
        );
    }
}
