//! `<home>/providers.toml`: the language-model providers a home may use besides the
//! broker's own models, all speaking the OpenAI-compatible chat-completions API (llama.cpp's
//! server, Ollama, vLLM, LM Studio, hosted APIs). Read by agent-exec (placement: which
//! provider serves a model, and whether it is remote), by the broker (which makes the
//! call, holding the secret) and by `spawner doctor`.
//!
//! ```toml
//! [[provider]]
//! name = "lab"                          # what agents' `[llm] escalate` and consents name
//! url = "https://llm.example.com/v1"    # the API's base: <url>/chat/completions
//! models = ["smollm2-135m"]             # the models it serves, by the names agents use
//! remote = true                         # default: false only for a loopback host
//! api_key_env = "LAB_API_KEY"           # the secret, from spawner's environment, or
//! # api_key_file = "secrets/lab.key"    # from a file under the home, mode 0600
//! timeout_s = 60                        # per call
//! # ca_file = "certs/lab-ca.pem"        # trust these instead of the system's roots
//! ```
//!
//! `api_key_env` names a variable of the environment `spawner` runs in (the command line's or
//! the daemon's): the spawner hands it to the agent-execs that may start the broker, so that a
//! broker started on demand has it, and agent-exec gives its component no environment at all.
//!
//! What leaves the machine for a remote call is the chat's messages and parameters, as the
//! agent gave them, and nothing else: not the agent's memory, config or input.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name under the home.
pub const PROVIDERS_FILE: &str = "providers.toml";

/// Default per-call timeout of a provider.
pub const DEFAULT_PROVIDER_TIMEOUT_S: u64 = 60;

/// One configured provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Its name (1-64 of a-z, 0-9, `-`, `_`); `local` is the broker's own.
    pub name: String,
    /// The API's base URL, `http://` or `https://`.
    pub url: String,
    /// The models it serves.
    #[serde(default)]
    pub models: Vec<String>,
    /// Whether a call leaves this machine; by default, unless the host is loopback.
    pub remote: Option<bool>,
    /// The environment variable that holds its API key: the broker's, which it inherits
    /// from the spawner whose run started it.
    pub api_key_env: Option<String>,
    /// A file under the home (mode 0600) that holds its API key.
    pub api_key_file: Option<PathBuf>,
    /// Per-call timeout, seconds.
    pub timeout_s: Option<u64>,
    /// PEM certificates to trust for its TLS instead of the system's roots (a file under
    /// the home, or absolute).
    pub ca_file: Option<PathBuf>,
}

impl Provider {
    /// Whether calls to it leave this machine.
    pub fn is_remote(&self) -> bool {
        self.remote.unwrap_or_else(|| !is_loopback(&self.url))
    }

    /// Its per-call timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_s.unwrap_or(DEFAULT_PROVIDER_TIMEOUT_S))
    }

    /// The host and port of its URL (for messages and doctor; never a secret).
    pub fn host(&self) -> &str {
        host_of(&self.url)
    }
}

pub(crate) fn host_of(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // userinfo@host: the part after the last '@' (and never shown before it).
    authority.rsplit('@').next().unwrap_or(authority)
}

/// Whether the URL's host is this machine's loopback.
pub(crate) fn is_loopback(url: &str) -> bool {
    let host = host_of(url);
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    provider: Vec<Provider>,
}

/// Why the providers file cannot be used.
pub type ProvidersError = crate::home::ConfigFileError;

/// The providers of a home; none when the file is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    /// In the file's order.
    pub list: Vec<Provider>,
}

impl Providers {
    /// Read `<home>/providers.toml`.
    pub fn load(home: &Path) -> Result<Providers, ProvidersError> {
        match crate::home::read_config_file(home, PROVIDERS_FILE)? {
            Some((text, path)) => Providers::parse(&text, &path),
            None => Ok(Providers::default()),
        }
    }

    /// Parse the file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Providers, ProvidersError> {
        let invalid = |message: String| ProvidersError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &raw.provider {
            if crate::home::validate_agent_name(&p.name).is_err() || p.name == "local" {
                return Err(invalid(format!(
                    "provider name {:?} must be 1-64 characters of a-z, 0-9, '-' and '_', and not `local`",
                    p.name
                )));
            }
            if !seen.insert(p.name.clone()) {
                return Err(invalid(format!("provider {:?} is named twice", p.name)));
            }
            if !(p.url.starts_with("http://") || p.url.starts_with("https://"))
                || host_of(&p.url).is_empty()
                || p.url.contains('\\')
            {
                return Err(invalid(format!(
                    "provider {:?}: url {:?} must start with http:// or https:// and name a host",
                    p.name, p.url
                )));
            }
            if let Some(var) = &p.api_key_env
                && !is_env_name(var)
            {
                return Err(invalid(format!(
                    "provider {:?}: api_key_env {var:?} is not a variable's name (letters, digits and '_', not starting with a digit)",
                    p.name
                )));
            }
            if let Some(var) = &p.api_key_env
                && changes_how_programs_run(var)
            {
                return Err(invalid(format!(
                    "provider {:?}: api_key_env {var:?} is a variable that changes how programs load or run, which the spawner would then pass to agent-exec and the broker; name a variable of its own (e.g. {}_API_KEY)",
                    p.name,
                    p.name
                        .to_ascii_uppercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                )));
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err(invalid(format!(
                    "provider {:?}: give api_key_env or api_key_file, not both",
                    p.name
                )));
            }
            if p.timeout_s == Some(0) {
                return Err(invalid(format!(
                    "provider {:?}: timeout_s must be at least 1",
                    p.name
                )));
            }
        }
        Ok(Providers { list: raw.provider })
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.name == name)
    }

    /// The environment variables that hold the providers' API keys (`api_key_env`), in
    /// the file's order: what a broker must be started with.
    pub fn key_vars(&self) -> impl Iterator<Item = &str> {
        self.list.iter().filter_map(|p| p.api_key_env.as_deref())
    }
}

/// Whether `name` can name an environment variable: ASCII letters, digits and `_`, not
/// starting with a digit (so no `=` or NUL, which no environment can hold).
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Variables that the dynamic loader, the C library, the Rust runtime, ONNX Runtime or this
/// runtime itself read: passed on as a "key", they would change how agent-exec and the
/// broker run, which the spawner's cleared environment is there to prevent.
fn changes_how_programs_run(name: &str) -> bool {
    const PREFIXES: [&str; 5] = ["LD_", "MALLOC_", "RUST_", "ORT_", "SPAWNER_GPU_"];
    const NAMES: [&str; 6] = [
        "PATH",
        "HOME",
        "GLIBC_TUNABLES",
        "SPAWNER_LOG",
        "SPAWNER_HOME",
        "TMPDIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Providers, ProvidersError> {
        Providers::parse(text, Path::new("providers.toml"))
    }

    #[test]
    fn loopback_hosts_are_local_unless_marked_and_others_are_remote() {
        let p = parse(
            "[[provider]]\nname = \"a\"\nurl = \"http://127.0.0.1:8080/v1\"\n\
             [[provider]]\nname = \"b\"\nurl = \"https://user:pw@api.example.com/v1\"\n\
             [[provider]]\nname = \"c\"\nurl = \"http://[::1]:9/v1\"\nremote = true\n\
             [[provider]]\nname = \"d\"\nurl = \"http://localhost/v1\"\n",
        )
        .expect("valid");
        let remote: Vec<bool> = p.list.iter().map(Provider::is_remote).collect();
        assert_eq!(remote, [false, true, true, false]);
        assert_eq!(p.list[1].host(), "api.example.com");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let err = |t: &str| parse(t).expect_err("invalid").to_string();
        assert!(
            err("[[provider]]\nname = \"local\"\nurl = \"http://x/v1\"\n").contains("not `local`")
        );
        assert!(err("[[provider]]\nname = \"a\"\nurl = \"ftp://x\"\n").contains("http://"));
        assert!(
            err("[[provider]]\nname = \"a\"\nurl = \"http://x\"\n[[provider]]\nname = \"a\"\nurl = \"http://y\"\n")
                .contains("named twice")
        );
        assert!(
            err("[[provider]]\nname = \"a\"\nurl = \"http://x\"\nkey = 1\n")
                .contains("unknown field")
        );
        for bad in ["", "1KEY", "A=B", "KEY\\u0000", "KÉY", "A-B"] {
            let text = format!(
                "[[provider]]\nname = \"a\"\nurl = \"http://x\"\napi_key_env = \"{bad}\"\n"
            );
            assert!(
                err(&text).contains("is not a variable's name"),
                "{bad:?}: {}",
                err(&text)
            );
        }
        for loader in [
            "LD_PRELOAD",
            "PATH",
            "GLIBC_TUNABLES",
            "ORT_DYLIB_PATH",
            "RUST_LOG",
        ] {
            let text = format!(
                "[[provider]]\nname = \"my-lab\"\nurl = \"http://x\"\napi_key_env = \"{loader}\"\n"
            );
            assert!(
                err(&text).contains("changes how programs load or run")
                    && err(&text).contains("MY_LAB_API_KEY"),
                "{loader:?}: {}",
                err(&text)
            );
        }
    }

    #[test]
    fn the_key_variables_are_the_providers_api_key_env_in_order() {
        let p = parse(
            "[[provider]]\nname = \"a\"\nurl = \"http://x\"\napi_key_env = \"_A_KEY2\"\n\
             [[provider]]\nname = \"b\"\nurl = \"http://y\"\napi_key_file = \"b.key\"\n\
             [[provider]]\nname = \"c\"\nurl = \"http://z\"\napi_key_env = \"C\"\n",
        )
        .expect("valid");
        assert_eq!(p.key_vars().collect::<Vec<_>>(), ["_A_KEY2", "C"]);
    }
}
