//! `<home>/tools.toml`: the MCP tool servers a home may use. Read by agent-exec (is the
//! server configured, and is it remote: a remote one needs the user's consent), by the
//! broker (which starts the servers, holds their sessions warm and makes the calls) and by
//! `spawner doctor`.
//!
//! ```toml
//! [[server]]
//! name = "time"                         # what agents' `[tools] servers` and consents name
//! command = "/usr/bin/uvx"              # a stdio server: the program and its arguments
//! args = ["mcp-server-time", "--local-timezone", "UTC"]
//! env = { TZ = "UTC" }                  # its whole environment, with PATH and HOME
//! cwd = "/srv/tools"                    # its working directory (default: the home)
//! timeout_s = 30                        # per call (default 30)
//! start_timeout_s = 30                  # to start and list its tools (default 30)
//! max_result_kib = 1024                 # larger results are refused (default 1024)
//! concurrency = 1                       # calls it is sent at once (default 1)
//!
//! [[server]]
//! name = "everything"
//! url = "http://127.0.0.1:3001/mcp"     # a streamable-HTTP server
//! headers_file = "secrets/everything.headers" # `Name: value` lines, mode 0600
//! remote = false                        # default: false only for a loopback host
//! ```
//!
//! A stdio server's environment is exactly `env` plus `PATH` and `HOME` (unless `env`
//! sets them): nothing of the broker's, and nothing of any agent's. What reaches a server
//! from an agent is the arguments of its calls, and nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file's name under the home.
pub const TOOLS_FILE: &str = "tools.toml";

/// Default per-call timeout.
pub const DEFAULT_CALL_TIMEOUT_S: u64 = 30;
/// Default time a server has to start and list its tools.
pub const DEFAULT_START_TIMEOUT_S: u64 = 30;
/// Default cap on a call's result.
pub const DEFAULT_MAX_RESULT_KIB: u64 = 1024;

/// One configured tool server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolServer {
    /// Its name (1-64 of a-z, 0-9, `-`, `_`).
    pub name: String,
    /// A stdio server's program.
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment (besides `PATH` and `HOME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory: absolute, or under the home (default: the home).
    pub cwd: Option<PathBuf>,
    /// A streamable-HTTP server's endpoint.
    pub url: Option<String>,
    /// A file under the home (mode 0600) of `Name: value` header lines sent with every
    /// request to an HTTP server (its secrets).
    pub headers_file: Option<PathBuf>,
    /// Whether a call leaves this machine; by default, for an HTTP server unless its host
    /// is loopback. A stdio server runs here.
    pub remote: Option<bool>,
    /// Per-call timeout, seconds.
    pub timeout_s: Option<u64>,
    /// Seconds it may take to start and list its tools.
    pub start_timeout_s: Option<u64>,
    /// Largest result accepted, KiB.
    pub max_result_kib: Option<u64>,
    /// Calls sent to it at once; more wait their turn.
    pub concurrency: Option<u32>,
}

impl ToolServer {
    /// Whether calls to it leave this machine.
    pub fn is_remote(&self) -> bool {
        self.remote.unwrap_or_else(|| {
            self.url
                .as_deref()
                .is_some_and(|url| !crate::providers::is_loopback(url))
        })
    }

    /// What to show of it (never a secret): the program, or the URL's host.
    pub fn endpoint(&self) -> String {
        match (&self.command, &self.url) {
            (Some(command), _) => command.clone(),
            (None, Some(url)) => crate::providers::host_of(url).to_owned(),
            (None, None) => String::new(),
        }
    }

    /// Its per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.unwrap_or(DEFAULT_CALL_TIMEOUT_S))
    }

    /// The time it has to start and list its tools.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_s.unwrap_or(DEFAULT_START_TIMEOUT_S))
    }

    /// The largest result accepted, bytes.
    pub fn max_result_bytes(&self) -> usize {
        usize::try_from(self.max_result_kib.unwrap_or(DEFAULT_MAX_RESULT_KIB) * 1024)
            .unwrap_or(usize::MAX)
    }

    /// Calls sent at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(1).max(1) as usize
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: Vec<ToolServer>,
}

/// Why the tools file cannot be used.
pub type ToolsError = crate::home::ConfigFileError;

/// The tool servers of a home; none when the file is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolServers {
    /// In the file's order.
    pub list: Vec<ToolServer>,
}

impl ToolServers {
    /// Read `<home>/tools.toml`.
    pub fn load(home: &Path) -> Result<ToolServers, ToolsError> {
        match crate::home::read_config_file(home, TOOLS_FILE)? {
            Some((text, path)) => ToolServers::parse(&text, &path),
            None => Ok(ToolServers::default()),
        }
    }

    /// Parse the file's text.
    pub fn parse(text: &str, path: &Path) -> Result<ToolServers, ToolsError> {
        let invalid = |message: String| ToolsError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for s in &raw.server {
            if crate::home::validate_agent_name(&s.name).is_err() {
                return Err(invalid(format!(
                    "server name {:?} must be 1-64 characters of a-z, 0-9, '-' and '_'",
                    s.name
                )));
            }
            if !seen.insert(s.name.clone()) {
                return Err(invalid(format!("server {:?} is named twice", s.name)));
            }
            match (&s.command, &s.url) {
                (Some(c), None) if !c.is_empty() => {}
                // No backslash: URL parsers differ on it, and the loopback check must see
                // the host the HTTP client connects to.
                (None, Some(url))
                    if (url.starts_with("http://") || url.starts_with("https://"))
                        && !crate::providers::host_of(url).is_empty()
                        && !url.contains('\\') => {}
                (None, Some(url)) => {
                    return Err(invalid(format!(
                        "server {:?}: url {url:?} must start with http:// or https:// and name a host",
                        s.name
                    )));
                }
                _ => {
                    return Err(invalid(format!(
                        "server {:?}: give `command` (a stdio server) or `url` (a streamable-HTTP server), one of them",
                        s.name
                    )));
                }
            }
            if s.url.is_some() && (!s.args.is_empty() || !s.env.is_empty() || s.cwd.is_some()) {
                return Err(invalid(format!(
                    "server {:?}: args, env and cwd are for a stdio server (`command`), not a url",
                    s.name
                )));
            }
            if s.command.is_some() && s.headers_file.is_some() {
                return Err(invalid(format!(
                    "server {:?}: headers_file is for a url, not a stdio server",
                    s.name
                )));
            }
            for (key, value) in [
                ("timeout_s", s.timeout_s),
                ("start_timeout_s", s.start_timeout_s),
                ("max_result_kib", s.max_result_kib),
                ("concurrency", s.concurrency.map(u64::from)),
            ] {
                if value == Some(0) {
                    return Err(invalid(format!(
                        "server {:?}: {key} must be at least 1",
                        s.name
                    )));
                }
            }
        }
        Ok(ToolServers { list: raw.server })
    }

    /// The server named `name`.
    pub fn get(&self, name: &str) -> Option<&ToolServer> {
        self.list.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ToolServers, ToolsError> {
        ToolServers::parse(text, Path::new("tools.toml"))
    }

    #[test]
    fn stdio_servers_are_local_and_http_ones_remote_unless_loopback() {
        let s = parse(
            "[[server]]\nname = \"time\"\ncommand = \"python3\"\nargs = [\"-m\", \"mcp_server_time\"]\n\
             [[server]]\nname = \"here\"\nurl = \"http://127.0.0.1:3001/mcp\"\n\
             [[server]]\nname = \"far\"\nurl = \"https://tools.example.com/mcp\"\n",
        )
        .expect("valid");
        let remote: Vec<bool> = s.list.iter().map(ToolServer::is_remote).collect();
        assert_eq!(remote, [false, false, true]);
        assert_eq!(s.list[2].endpoint(), "tools.example.com");
        assert_eq!(s.list[0].call_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let err = |t: &str| parse(t).expect_err("invalid").to_string();
        assert!(err("[[server]]\nname = \"a\"\n").contains("give `command`"));
        assert!(
            err("[[server]]\nname = \"a\"\ncommand = \"x\"\nurl = \"http://h/\"\n")
                .contains("one of them")
        );
        assert!(err("[[server]]\nname = \"a\"\nurl = \"ftp://h\"\n").contains("http://"));
        assert!(
            err("[[server]]\nname = \"a\"\nurl = 'http://evil.example\\@127.0.0.1/'\n")
                .contains("http://")
        );
        assert!(
            err("[[server]]\nname = \"a\"\nurl = \"http://h\"\nargs = [\"x\"]\n")
                .contains("stdio server")
        );
        assert!(
            err("[[server]]\nname = \"a\"\ncommand = \"x\"\ntimeout_s = 0\n")
                .contains("timeout_s must be at least 1")
        );
        assert!(
            err("[[server]]\nname = \"A B\"\ncommand = \"x\"\n").contains("server name \"A B\"")
        );
    }
}
