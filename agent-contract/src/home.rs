//! The runtime's home directory and how an agent name maps to a directory in it.
//!
//! ```text
//! <home>/agents/<name>/agent.toml   one directory per agent
//! <home>/memory.db                  the SQLite memory store (WAL)
//! <home>/cache/components/          compiled components, per component path and engine
//! ```
//!
//! The home is `--home`, else `$SPAWNER_HOME`, else `$XDG_DATA_HOME/spawner`, else
//! `~/.local/share/spawner`.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the default home directory.
pub const HOME_ENV: &str = "SPAWNER_HOME";

/// The longest agent name accepted.
pub const MAX_AGENT_NAME_LEN: usize = 64;

/// The runtime's home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    /// Chosen with `--home` or `$SPAWNER_HOME` rather than by default.
    chosen: bool,
}

/// Why no home directory could be chosen.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot choose a home directory: none of --home, ${HOME_ENV}, $XDG_DATA_HOME or $HOME is set; pass --home DIR"
)]
pub struct NoHome;

/// Why an agent name did not lead to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentLookupError {
    /// The name could escape the agents directory or is otherwise malformed.
    #[error(
        "invalid agent name {name:?}: a name is 1-{MAX_AGENT_NAME_LEN} characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The name is valid but there is no `agent.toml` for it.
    #[error(
        "no agent named {name:?}: {manifest} does not exist (run `spawner agents` to list the installed agents)"
    )]
    NotFound {
        /// The name as given.
        name: String,
        /// The manifest path that was looked for.
        manifest: PathBuf,
    },
}

impl Home {
    /// Use `root` as the home directory.
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home {
            root: root.into(),
            chosen: true,
        }
    }

    /// The home from an explicit choice, else the environment (see the module docs).
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home, NoHome> {
        let from_env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
        if let Some(root) = explicit {
            return Ok(Home::new(root));
        }
        if let Some(root) = from_env(HOME_ENV) {
            return Ok(Home::new(root));
        }
        let default = |root: PathBuf| Home {
            root,
            chosen: false,
        };
        if let Some(data) = from_env("XDG_DATA_HOME") {
            return Ok(default(PathBuf::from(data).join("spawner")));
        }
        from_env("HOME")
            .map(|home| default(PathBuf::from(home).join(".local/share/spawner")))
            .ok_or(NoHome)
    }

    /// Where `spawner serve` listens by default: `$XDG_RUNTIME_DIR/spawner/spawner.sock`
    /// for the default home, `<home>/run/spawner.sock` for a home chosen with `--home` or
    /// `$SPAWNER_HOME` (so that two homes never share a daemon).
    pub fn socket_path(&self) -> PathBuf {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty());
        match runtime {
            Some(dir) if !self.chosen => PathBuf::from(dir).join("spawner").join("spawner.sock"),
            _ => self.root.join("run").join("spawner.sock"),
        }
    }

    /// Where the inference broker (gpu-broker) listens: `$XDG_RUNTIME_DIR/spawner/broker.sock`
    /// for the default home, `<home>/run/broker.sock` for a chosen one (as [`Home::socket_path`]).
    pub fn broker_socket_path(&self) -> PathBuf {
        self.socket_path().with_file_name("broker.sock")
    }

    /// The directory of the home's sockets, locks and the broker's log: the parent of
    /// [`Home::socket_path`].
    pub fn runtime_dir(&self) -> PathBuf {
        let socket = self.socket_path();
        socket.parent().map_or(socket.clone(), Path::to_path_buf)
    }

    /// The lock files of the run slots the home's processes share (the CLI's fan-outs and
    /// the daemon): `slots/` in [`Home::runtime_dir`].
    pub fn slots_dir(&self) -> PathBuf {
        self.runtime_dir().join("slots")
    }

    /// Make the directory of `socket` ready: when it is this home's own runtime directory,
    /// private ([`ensure_private_dir`]: returns the old mode when it had to be fixed); any
    /// other directory (`--socket /tmp/x.sock`) is the user's, created 0700 if missing and
    /// otherwise left alone.
    pub fn prepare_socket_dir(&self, socket: &Path) -> std::io::Result<Option<u32>> {
        let dir = socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if dir == self.runtime_dir() {
            ensure_private_dir(dir)
        } else {
            create_private_dir_all(dir).map(|()| None)
        }
    }

    /// The model repository: one directory per model, each with a `model.toml`.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding one subdirectory per agent.
    pub fn agents_dir(&self) -> PathBuf {
        self.root.join("agents")
    }

    /// The secret that seeds durable runs' random numbers (with the run id): 32 random
    /// bytes, 0600, made on first use.
    pub fn random_key_path(&self) -> PathBuf {
        self.root.join("random.key")
    }

    /// The SQLite memory store.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("memory.db")
    }

    /// The compiled-component cache.
    pub fn component_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("components")
    }

    /// The manifest of the agent `name`, which must exist.
    pub fn agent_manifest(&self, name: &str) -> Result<PathBuf, AgentLookupError> {
        validate_agent_name(name)?;
        let manifest = self.agents_dir().join(name).join("agent.toml");
        if manifest.is_file() {
            Ok(manifest)
        } else {
            Err(AgentLookupError::NotFound {
                name: name.to_owned(),
                manifest,
            })
        }
    }
}

/// Create `dir` and any missing parents with mode 0700: the home holds agents' memory,
/// which is nobody else's business. A directory that exists is left as it is: it may be
/// one the user named for another purpose (`--socket /tmp/x.sock`). The home's own
/// directories are made private by [`ensure_private_dir`].
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Make sure `dir` exists and is private: created 0700 (with any missing parents) when
/// absent; when it exists open to other users (a home made with a plain `mkdir`, say),
/// made 0700, returning its old mode so that the caller can say so. A directory owned by
/// another user is an error: its owner decides who reads it, so nothing private belongs
/// there. For the directories of a home only (the home itself, its runtime directory), never
/// for one the user named for another purpose. Costs what [`create_private_dir_all`] does
/// for a directory that exists: one `mkdir` and one `stat`.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return create_private_dir_all(dir).map(|()| None);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user: choose a directory of your own (--home)",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(Some(mode))
}

/// What to say when [`ensure_private_dir`] made `dir` private.
pub fn made_private_notice(dir: &Path, old_mode: u32) -> String {
    format!(
        "{} was open to other users (mode {old_mode:o}); made it private (0700)",
        dir.display()
    )
}

/// Open `path` for appending, creating it with mode 0600 (a lock or a log: private like
/// everything else in the home).
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Check that `name` is a plain agent name that cannot leave the agents directory.
pub fn validate_agent_name(name: &str) -> Result<(), AgentLookupError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_AGENT_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
    if valid {
        Ok(())
    } else {
        Err(AgentLookupError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "", "..", "../x", "a/b", "/abs", ".hidden", "-dash", "UPPER", "sp ace", "a\0b",
        ] {
            assert!(
                matches!(
                    validate_agent_name(bad),
                    Err(AgentLookupError::InvalidName { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        assert!(validate_agent_name(&"a".repeat(MAX_AGENT_NAME_LEN + 1)).is_err());
        for good in ["echo", "notes", "command-guard", "a_1", "9lives"] {
            assert!(validate_agent_name(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn an_open_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let old = ensure_private_dir(&home)
            .expect("private")
            .expect("it was open");
        assert!(made_private_notice(&home, old).contains("(mode 755); made it private"));
        let mode = std::fs::metadata(&home).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(ensure_private_dir(&home).expect("again"), None);
        let fresh = dir.path().join("a/b");
        assert_eq!(ensure_private_dir(&fresh).expect("created"), None);
        let mode = std::fs::metadata(&fresh)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn lookup_reports_the_path_it_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::new(dir.path());
        let err = home.agent_manifest("missing").expect_err("must fail");
        let text = err.to_string();
        assert!(
            text.contains("missing") && text.contains("agent.toml"),
            "{text}"
        );
        std::fs::create_dir_all(dir.path().join("agents/here")).expect("mkdir");
        std::fs::write(dir.path().join("agents/here/agent.toml"), "").expect("write");
        assert!(home.agent_manifest("here").is_ok());
    }
}

/// Why a configuration file of the home (`providers.toml`, `tools.toml`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, and where.
        message: String,
    },
}

/// The text of `<home>/<name>` and its path; `None` when the file does not exist.
pub fn read_config_file(
    home: &Path,
    name: &str,
) -> Result<Option<(String, PathBuf)>, ConfigFileError> {
    let path = home.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((text, path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigFileError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}
