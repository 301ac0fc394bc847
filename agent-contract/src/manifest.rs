//! `agent.toml`: parsed into [`RawManifest`] (with source spans), then validated into
//! [`Manifest`]. Every error carries the file, line and column it is about.
//!
//! ```toml
//! name = "notes"                  # must match the agent's directory name
//! version = "0.1.0"
//! description = "Remembers notes across runs"
//! component = "notes.wasm"        # relative to the agent's directory
//! sha256 = "…64 hex digits…"      # optional pin of the component file
//!
//! [limits]
//! timeout_ms = 10000              # wall-clock deadline (epoch interruption)
//! memory_mb = 64                  # linear-memory cap
//! fuel = 1000000000               # optional instruction budget
//!
//! [memory]
//! namespace = "notes"             # defaults to the agent's name
//! retain_input = false            # keep request inputs in run records
//! keep_runs = 1000                # run records kept for this agent
//!
//! [models]
//! allowed = ["sentiment"]         # models this agent may call
//!
//! [llm]
//! models = ["smollm2-135m"]       # language models this agent may chat with
//! retain = false                  # keep prompts and answers with the run's evidence
//! escalate = ["lab"]              # providers (providers.toml) it may use for a model
//!                                 # not served locally; remote ones need a consent
//!
//! [tools]
//! servers = ["time"]              # tool servers (tools.toml) this agent may use
//! allow = ["time/get_current_time"] # optional: only these of their tools
//! retain = false                  # keep each call's arguments and result as evidence
//!
//! [[preopens]]                    # none unless declared; read-only unless writable
//! host = "data"                   # relative to the agent's directory, or absolute
//! guest = "/data"
//! writable = false
//! relative_to = "agent"           # or "work_dir": the caller's working directory
//!                                 # (a hook's repository), resolved per request
//!
//! [placement]
//! requires_gpu = false            # true: its chats with the local LLM run on a GPU or
//!                                 # not at all: without one they go to a provider of
//!                                 # [llm] escalate (as escalations, under its rules) or
//!                                 # fail `unavailable`; its ONNX models follow their own
//!                                 # model.toml `require_gpu`
//!
//! [durable]
//! journal = false                 # journal the run's host calls, so that a failed run
//!                                 # can be resumed (`spawner runs resume`) and any run
//!                                 # replayed; the journal keeps the calls' results (and
//!                                 # the input) as long as the run's record
//! retries = 0                     # a failed attempt is resumed up to this many times
//! retry_backoff_ms = 200          # before the first retry; doubled before each next,
//!                                 # up to a minute
//!
//! [runs]
//! agents = ["reviewer"]           # agents it may start as sub-runs (none by default)
//! parallel = 4                    # of its sub-runs running at once
//! max = 256                       # sub-runs one run may start
//!
//! [config]                        # strings, numbers and booleans, read by the agent
//! greeting = "hello"
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Default wall-clock deadline of a request.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Longest deadline a manifest may ask for (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Default linear-memory cap.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Largest linear-memory cap a manifest may ask for.
pub const MAX_MEMORY_MB: u64 = 4096;
/// Default number of run records kept per agent.
pub const DEFAULT_KEEP_RUNS: u32 = 1000;
/// The most retries `[durable] retries` may ask for.
pub const MAX_RETRIES: u64 = 10;
/// The default wait before a durable run's first retry.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 200;
/// The longest wait `[durable] retry_backoff_ms` may ask for.
pub const MAX_RETRY_BACKOFF_MS: u64 = 60_000;
/// How many of a run's sub-runs run at once by default (`[runs] parallel`).
pub const DEFAULT_SUB_RUNS_PARALLEL: u64 = 4;
/// The most `[runs] parallel` may ask for.
pub const MAX_SUB_RUNS_PARALLEL: u64 = 64;
/// How many sub-runs one run may start by default (`[runs] max`).
pub const DEFAULT_SUB_RUNS_MAX: u64 = 256;
/// The most `[runs] max` may ask for.
pub const MAX_SUB_RUNS_MAX: u64 = 4096;
/// How deep sub-runs may nest: a run this many levels below the one a caller asked for
/// may start none.
pub const MAX_SUB_RUN_DEPTH: u32 = 8;

/// An `agent.toml` as written, before validation. Spans point back into the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    name: Spanned<String>,
    version: Spanned<String>,
    description: Option<String>,
    component: Spanned<String>,
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    memory: RawMemory,
    #[serde(default)]
    models: RawModels,
    #[serde(default)]
    llm: RawLlm,
    #[serde(default)]
    tools: RawTools,
    #[serde(default)]
    preopens: Vec<RawPreopen>,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    durable: RawDurable,
    #[serde(default)]
    runs: RawRuns,
    #[serde(default)]
    config: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout_ms: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    fuel: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    retain_input: bool,
    keep_runs: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    #[serde(default)]
    allowed: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLlm {
    #[serde(default)]
    models: Vec<Spanned<String>>,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    escalate: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTools {
    #[serde(default)]
    servers: Vec<Spanned<String>>,
    allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    retain: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDurable {
    #[serde(default)]
    journal: bool,
    retries: Option<Spanned<u64>>,
    retry_backoff_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuns {
    #[serde(default)]
    agents: Vec<Spanned<String>>,
    parallel: Option<Spanned<u64>>,
    max: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreopen {
    host: Spanned<String>,
    guest: Spanned<String>,
    #[serde(default)]
    writable: bool,
    relative_to: Option<Spanned<String>>,
    #[serde(default)]
    allow_outside: bool,
}

/// `[llm]`: which language models an agent may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmPolicy {
    /// The models, by name; a chat with any other is refused before any connection.
    pub models: Vec<String>,
    /// Keep each call's prompt and answer with the run's evidence (off: only counts).
    pub retain: bool,
    /// Providers of `providers.toml` it may use for a model the broker does not serve, in
    /// order of preference. A remote one needs the user's consent as well.
    pub escalate: Vec<String>,
}

/// `[tools]`: which tool servers, and which of their tools, an agent may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolPolicy {
    /// Servers of `tools.toml`, by name; a call to any other is refused before any
    /// connection.
    pub servers: Vec<String>,
    /// When given, only these tools (`server/tool`) of those servers.
    pub allow: Option<Vec<String>>,
    /// Keep each call's arguments and result with the run's evidence (off: only sizes).
    pub retain: bool,
}

impl ToolPolicy {
    /// Whether the agent may call `tool` of `server`.
    pub fn allows(&self, server: &str, tool: &str) -> bool {
        self.servers.iter().any(|s| s == server)
            && self.allow.as_ref().is_none_or(|allow| {
                allow
                    .iter()
                    .any(|a| a.split_once('/') == Some((server, tool)))
            })
    }
}

/// `[runs]`: which agents an agent may start as sub-runs, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRunPolicy {
    /// The agents, by name; starting any other is refused.
    pub agents: Vec<String>,
    /// How many of one run's sub-runs run at once; the rest wait, unstarted.
    pub parallel: usize,
    /// How many sub-runs one run may start.
    pub max: u32,
}

impl Default for SubRunPolicy {
    fn default() -> SubRunPolicy {
        SubRunPolicy {
            agents: Vec::new(),
            parallel: DEFAULT_SUB_RUNS_PARALLEL as usize,
            max: DEFAULT_SUB_RUNS_MAX as u32,
        }
    }
}

impl SubRunPolicy {
    /// Whether the agent may start sub-runs at all.
    pub fn any(&self) -> bool {
        !self.agents.is_empty()
    }

    /// Whether it may start a run of `agent`.
    pub fn allows(&self, agent: &str) -> bool {
        self.agents.iter().any(|a| a == agent)
    }

    /// Why run `run_id` may not start its sub-run number `child`, a run of `agent`; `None`
    /// when it may. The one rule, checked by agent-exec before it asks and by the spawner
    /// that runs the parent again.
    pub fn refuses(&self, run_id: &str, child: u32, agent: &str) -> Option<String> {
        if !self.allows(agent) {
            return Some(format!(
                "agent {agent:?} is not in this agent's [runs] agents ({}); add it there to let this agent start it",
                if self.agents.is_empty() {
                    "none".to_owned()
                } else {
                    self.agents.join(", ")
                }
            ));
        }
        // A sub-run's id is its parent's, a dot and its number.
        let depth = run_id.matches('.').count();
        if depth >= MAX_SUB_RUN_DEPTH as usize {
            return Some(format!(
                "run {run_id} is {depth} sub-runs deep, the most there may be; it cannot start more"
            ));
        }
        if child >= self.max {
            return Some(format!(
                "this run has started {child} sub-runs, its [runs] max; raise it in agent.toml to start more"
            ));
        }
        None
    }
}

/// Where an agent may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Chats with the broker's own language model must run on a GPU: where the model does
    /// not run on one, they escalate to a provider of `[llm] escalate` (under the same
    /// rules as any escalation) or fail `unavailable`, never silently on the CPU.
    #[serde(default)]
    pub requires_gpu: bool,
}

/// `[durable]`: whether an agent's runs can be resumed and replayed, and retried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    /// Journal every host call whose result comes from outside the component (chats, tool
    /// calls, inference, memory reads, clocks) before the guest gets it, and keep the
    /// input: a failed run can then be resumed without redoing its completed calls, and
    /// any run replayed. The agent's clocks and random numbers come from the host (the
    /// random ones seeded from the run id), so that a re-run sees the same. Off: none of
    /// that, and no cost.
    pub journal: bool,
    /// How many times a failed attempt is resumed at once, by whoever ran it (the command
    /// line, the daemon, a hook), when it failed for a reason that may pass; 0: never.
    pub retries: u32,
    /// The wait before the first retry; each next one waits twice as long.
    pub retry_backoff: Duration,
}

impl Durable {
    /// The wait before retry `retry` (1 for the first): the backoff, doubled for each
    /// retry before it, up to [`MAX_RETRY_BACKOFF_MS`].
    pub fn backoff(&self, retry: u32) -> Duration {
        self.retry_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(Duration::from_millis(MAX_RETRY_BACKOFF_MS))
    }
}

/// A validated agent manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The agent's name; equal to its directory name.
    pub name: String,
    /// The agent's version, as written.
    pub version: String,
    /// One line saying what the agent is for.
    pub description: Option<String>,
    /// The agent's directory.
    pub dir: PathBuf,
    /// The component file, inside `dir`.
    pub component: PathBuf,
    /// The component file's expected SHA-256, when pinned.
    pub sha256: Option<[u8; 32]>,
    /// Resource limits applied to every request.
    pub limits: Limits,
    /// How the agent's memory is kept.
    pub memory: MemoryPolicy,
    /// Models the agent may call through the broker.
    pub allowed_models: Vec<String>,
    /// Language models the agent may chat with, and what evidence keeps.
    pub llm: LlmPolicy,
    /// Tool servers the agent may use, and what evidence keeps.
    pub tools: ToolPolicy,
    /// Host directories visible to the agent; none unless declared.
    pub preopens: Vec<Preopen>,
    /// Where the agent may run.
    pub placement: Placement,
    /// Whether its runs keep a journal, for resume and replay.
    pub durable: Durable,
    /// Which agents it may start as sub-runs.
    pub runs: SubRunPolicy,
    /// `[config]` values rendered as text, for the agent to read.
    pub config: BTreeMap<String, String>,
}

/// Resource limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline, enforced by epoch interruption.
    pub timeout: Duration,
    /// Cap on each linear memory, in bytes.
    pub memory_bytes: u64,
    /// Instruction budget; `None` runs without fuel metering.
    pub fuel: Option<u64>,
}

/// How an agent's memory and run history are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// The store namespace the agent reads and writes.
    pub namespace: String,
    /// Whether run records keep the request input.
    pub retain_input: bool,
    /// How many run records to keep for this agent.
    pub keep_runs: u32,
}

/// A host directory made visible to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host: absolute for [`PreopenBase::AgentDir`], relative to the
    /// caller's working directory for [`PreopenBase::WorkDir`].
    pub host: PathBuf,
    /// What a relative `host` was relative to.
    pub base: PreopenBase,
    /// Where the agent sees it.
    pub guest: String,
    /// Whether the agent may write there.
    pub writable: bool,
    /// The manifest says `allow_outside = true`: the directory may lie outside its base
    /// (an absolute path elsewhere, `..` above the base, a symlink out of it, the root).
    /// Without it, such a preopen is refused.
    pub allow_outside: bool,
}

impl Preopen {
    /// Whether this preopen reaches beyond its base or is writable: what `spawner agents`
    /// shows beside the agent, so that a broad grant is never quiet.
    pub fn is_broad(&self) -> bool {
        self.allow_outside || self.writable
    }
}

/// Whether the relative path `path` stays within the directory it is relative to, by its
/// components alone (`a/../b` does, `../b` and `a/../../b` do not).
fn stays_within(path: &Path) -> bool {
    use std::path::Component;
    let mut depth: usize = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// What a preopen's relative `host` path is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreopenBase {
    /// The agent's directory (`relative_to = "agent"`, the default); resolved at load.
    AgentDir,
    /// The caller's working directory, e.g. the repository a git hook runs in
    /// (`relative_to = "work_dir"`); resolved per request.
    WorkDir,
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value is missing, unknown, mistyped or out of range.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The manifest's path.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Why the manifest's component cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The file could not be read.
    #[error("cannot read component {}: {source}", path.display())]
    Read {
        /// The component's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file's hash differs from the manifest's pin.
    #[error(
        "component {} has sha256 {actual}, but agent.toml pins {expected}; rebuild the agent or update the pin",
        path.display()
    )]
    PinMismatch {
        /// The component's path.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
}

/// The largest component file read (the biggest agents seen, Python ones, are ~40 MB).
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// The whole of `path` when it is a regular file of at most `limit` bytes. A FIFO, a
/// device (`/dev/zero`, through a symlink or not) or a directory is refused without
/// blocking: the file is opened non-blocking and checked before it is read.
pub fn read_regular_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory is never read)",
        ));
    }
    if meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes, over the limit of {limit} bytes", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("over the limit of {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// A component file read and checked against its pin.
pub struct ComponentBytes {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// Its SHA-256, as lowercase hex.
    pub sha256_hex: String,
}

impl Manifest {
    /// Whether a run of it may reach the broker, and so start it: it may use a model, a
    /// language model or a tool server (agent-exec refuses any other call before it
    /// connects).
    pub fn may_use_broker(&self) -> bool {
        !self.allowed_models.is_empty()
            || !self.llm.models.is_empty()
            || !self.tools.servers.is_empty()
    }

    /// Read the component file and check it against the `sha256` pin, if any.
    pub fn read_component(&self) -> Result<ComponentBytes, ComponentError> {
        use sha2::{Digest, Sha256};
        let path = &self.component;
        let bytes = read_regular_file(path, MAX_COMPONENT_BYTES).map_err(|source| {
            ComponentError::Read {
                path: path.clone(),
                source,
            }
        })?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let sha256_hex = to_hex(&digest);
        self.check_pin(&sha256_hex)?;
        Ok(ComponentBytes { bytes, sha256_hex })
    }

    /// Check a hash of the component (SHA-256, lowercase hex) against the `sha256` pin, if
    /// any: for a caller that knows the hash without reading the file (the compiled cache).
    pub fn check_pin(&self, sha256_hex: &str) -> Result<(), ComponentError> {
        match self.sha256 {
            Some(pin) if to_hex(&pin) != sha256_hex => Err(ComponentError::PinMismatch {
                path: self.component.clone(),
                expected: to_hex(&pin),
                actual: sha256_hex.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Read and validate the manifest at `path` (`<agents>/<name>/agent.toml`).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Validate `text`, the contents of the manifest at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            ManifestError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().trim().to_owned()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        raw.validate(dir, &|span, message| invalid(Some(span), message))
    }
}

type Invalid<'a> = dyn Fn(Range<usize>, String) -> ManifestError + 'a;

impl RawManifest {
    fn validate(self, dir: PathBuf, invalid: &Invalid<'_>) -> Result<Manifest, ManifestError> {
        let name = self.name.get_ref();
        if let Err(e) = crate::home::validate_agent_name(name) {
            return Err(invalid(self.name.span(), e.to_string()));
        }
        if let Some(dir_name) = dir.file_name().and_then(|n| n.to_str())
            && dir_name != name
        {
            return Err(invalid(
                self.name.span(),
                format!(
                    "name {name:?} does not match the agent's directory {dir_name:?}; rename one of them"
                ),
            ));
        }
        if self.version.get_ref().trim().is_empty() {
            return Err(invalid(self.version.span(), "version is empty".into()));
        }
        let component = relative_inside(self.component.get_ref()).ok_or_else(|| {
            invalid(
                self.component.span(),
                format!(
                    "component {:?} must be a relative path inside the agent's directory",
                    self.component.get_ref()
                ),
            )
        })?;
        let sha256 = match self.sha256 {
            None => None,
            Some(pin) => Some(parse_sha256(pin.get_ref()).ok_or_else(|| {
                invalid(pin.span(), "sha256 must be 64 hexadecimal digits".into())
            })?),
        };

        let timeout_ms = bounded(
            self.limits.timeout_ms,
            DEFAULT_TIMEOUT_MS,
            1..=MAX_TIMEOUT_MS,
            "limits.timeout_ms",
            invalid,
        )?;
        let memory_mb = bounded(
            self.limits.memory_mb,
            DEFAULT_MEMORY_MB,
            1..=MAX_MEMORY_MB,
            "limits.memory_mb",
            invalid,
        )?;
        let durable = self.durable;
        if let Some(retries) = &durable.retries
            && *retries.get_ref() > 0
            && !durable.journal
        {
            return Err(invalid(
                retries.span(),
                "durable.retries needs `journal = true` in [durable]: a retry resumes the run from its journal"
                    .into(),
            ));
        }
        let durable = Durable {
            journal: durable.journal,
            retries: u32::try_from(bounded(
                durable.retries,
                0,
                0..=MAX_RETRIES,
                "durable.retries",
                invalid,
            )?)
            .unwrap_or(0),
            retry_backoff: Duration::from_millis(bounded(
                durable.retry_backoff_ms,
                DEFAULT_RETRY_BACKOFF_MS,
                0..=MAX_RETRY_BACKOFF_MS,
                "durable.retry_backoff_ms",
                invalid,
            )?),
        };
        let fuel = match self.limits.fuel {
            Some(f) if *f.get_ref() == 0 => {
                return Err(invalid(f.span(), "limits.fuel must be at least 1".into()));
            }
            f => f.map(Spanned::into_inner),
        };

        let namespace = match self.memory.namespace {
            None => name.clone(),
            Some(ns) => {
                if crate::home::validate_agent_name(ns.get_ref()).is_err() {
                    return Err(invalid(
                        ns.span(),
                        "memory.namespace must be 1-64 characters of a-z, 0-9, '-' and '_'".into(),
                    ));
                }
                ns.into_inner()
            }
        };
        let keep_runs = bounded(
            self.memory
                .keep_runs
                .map(|k| Spanned::new(k.span(), u64::from(*k.get_ref()))),
            u64::from(DEFAULT_KEEP_RUNS),
            1..=u64::from(u32::MAX),
            "memory.keep_runs",
            invalid,
        )?;

        let allowed_models = names(self.models.allowed, "model names", invalid)?;
        let llm_models = names(self.llm.models, "llm model names", invalid)?;
        let escalate = names(self.llm.escalate, "llm escalate provider names", invalid)?;
        let tool_servers = names(self.tools.servers, "tools servers", invalid)?;
        let tool_allow = match self.tools.allow {
            None => None,
            Some(list) => {
                let mut allow = Vec::with_capacity(list.len());
                for entry in list {
                    let known = entry.get_ref().split_once('/').filter(|(server, tool)| {
                        !tool.is_empty() && tool_servers.iter().any(|s| s == server)
                    });
                    if known.is_none() {
                        return Err(invalid(
                            entry.span(),
                            format!(
                                "tools.allow entry {:?} must be \"server/tool\" with a server listed in tools.servers",
                                entry.get_ref()
                            ),
                        ));
                    }
                    allow.push(entry.into_inner());
                }
                Some(allow)
            }
        };

        let runs = sub_run_policy(self.runs, invalid)?;

        let mut preopens = Vec::with_capacity(self.preopens.len());
        for p in self.preopens {
            let host = Path::new(p.host.get_ref());
            if p.host.get_ref().is_empty() {
                return Err(invalid(p.host.span(), "preopens.host is empty".into()));
            }
            if p.guest.get_ref().is_empty() {
                return Err(invalid(p.guest.span(), "preopens.guest is empty".into()));
            }
            let base = match p
                .relative_to
                .as_ref()
                .map(|r| (r.get_ref().as_str(), r.span()))
            {
                None | Some(("agent", _)) => PreopenBase::AgentDir,
                Some(("work_dir", _)) if host.is_absolute() => {
                    return Err(invalid(
                        p.host.span(),
                        "preopens.host must be a relative path when relative_to = \"work_dir\""
                            .into(),
                    ));
                }
                Some(("work_dir", _)) => PreopenBase::WorkDir,
                Some((other, span)) => {
                    return Err(invalid(
                        span,
                        format!(
                            "preopens.relative_to is {other:?}; expected \"agent\" or \"work_dir\""
                        ),
                    ));
                }
            };
            let outside = match host.strip_prefix(&dir) {
                _ if host.is_relative() => !stays_within(host),
                Ok(inside) => !stays_within(inside),
                Err(_) => true,
            };
            if outside && !p.allow_outside {
                return Err(invalid(
                    p.host.span(),
                    format!(
                        "preopens.host {:?} is outside the {} (the root, an absolute path elsewhere, or `..` above it); \
                         set `allow_outside = true` in this [[preopens]] to grant it",
                        p.host.get_ref(),
                        match base {
                            PreopenBase::AgentDir => "agent's directory",
                            PreopenBase::WorkDir => "work directory",
                        }
                    ),
                ));
            }
            preopens.push(Preopen {
                host: match base {
                    PreopenBase::AgentDir if host.is_relative() => dir.join(host),
                    _ => host.to_owned(),
                },
                base,
                guest: p.guest.into_inner(),
                writable: p.writable,
                allow_outside: p.allow_outside,
            });
        }

        let mut config = BTreeMap::new();
        for (key, value) in self.config {
            let span = value.span();
            let text = match value.into_inner() {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    return Err(invalid(
                        span,
                        format!(
                            "config.{key} must be a string, number or boolean (arrays and tables are not supported)"
                        ),
                    ));
                }
            };
            config.insert(key, text);
        }

        Ok(Manifest {
            name: self.name.into_inner(),
            version: self.version.into_inner(),
            description: self.description,
            component: dir.join(component),
            dir,
            sha256,
            limits: Limits {
                timeout: Duration::from_millis(timeout_ms),
                memory_bytes: memory_mb * 1024 * 1024,
                fuel,
            },
            memory: MemoryPolicy {
                namespace,
                retain_input: self.memory.retain_input,
                keep_runs: u32::try_from(keep_runs).unwrap_or(u32::MAX),
            },
            allowed_models,
            llm: LlmPolicy {
                models: llm_models,
                retain: self.llm.retain,
                escalate,
            },
            tools: ToolPolicy {
                servers: tool_servers,
                allow: tool_allow,
                retain: self.tools.retain,
            },
            preopens,
            placement: self.placement,
            durable,
            runs,
            config,
        })
    }
}

/// A list of names, none of them empty.
fn sub_run_policy(raw: RawRuns, invalid: &Invalid<'_>) -> Result<SubRunPolicy, ManifestError> {
    let mut agents = Vec::with_capacity(raw.agents.len());
    for agent in raw.agents {
        if let Err(e) = crate::home::validate_agent_name(agent.get_ref()) {
            return Err(invalid(agent.span(), format!("runs.agents: {e}")));
        }
        agents.push(agent.into_inner());
    }
    let parallel = bounded(
        raw.parallel,
        DEFAULT_SUB_RUNS_PARALLEL,
        1..=MAX_SUB_RUNS_PARALLEL,
        "runs.parallel",
        invalid,
    )?;
    let max = bounded(
        raw.max,
        DEFAULT_SUB_RUNS_MAX,
        1..=MAX_SUB_RUNS_MAX,
        "runs.max",
        invalid,
    )?;
    Ok(SubRunPolicy {
        agents,
        parallel: usize::try_from(parallel).unwrap_or(1),
        max: u32::try_from(max).unwrap_or(1),
    })
}

fn names(
    list: Vec<Spanned<String>>,
    what: &str,
    invalid: &Invalid<'_>,
) -> Result<Vec<String>, ManifestError> {
    list.into_iter()
        .map(|name| {
            if name.get_ref().trim().is_empty() {
                Err(invalid(name.span(), format!("{what} must not be empty")))
            } else {
                Ok(name.into_inner())
            }
        })
        .collect()
}

fn bounded(
    value: Option<Spanned<u64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    key: &str,
    invalid: &Invalid<'_>,
) -> Result<u64, ManifestError> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(v.into_inner()),
        Some(v) => Err(invalid(
            v.span(),
            format!(
                "{key} = {} is out of range; expected {} to {}",
                v.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

/// `path` as a relative path that stays inside its base directory, or `None`.
fn relative_inside(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, PathComponent::Normal(_) | PathComponent::CurDir));
    ok.then(|| p.to_owned())
}

/// Parse 64 hexadecimal digits.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Lowercase hexadecimal, as component hashes are written.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"echo\"\nversion = \"0.1.0\"\ncomponent = \"echo.wasm\"\n";

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/home/x/agents/echo/agent.toml"))
    }

    fn position(err: ManifestError) -> (usize, usize, String) {
        match err {
            ManifestError::Invalid {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse(MINIMAL).expect("valid");
        assert_eq!(m.component, Path::new("/home/x/agents/echo/echo.wasm"));
        assert_eq!(m.limits.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(m.limits.memory_bytes, DEFAULT_MEMORY_MB << 20);
        assert_eq!(m.memory.namespace, "echo");
        assert!(m.preopens.is_empty() && m.config.is_empty() && m.sha256.is_none());
    }

    #[test]
    fn retries_need_a_journal_and_back_off_doubling() {
        let m = parse(&format!(
            "{MINIMAL}[durable]\njournal = true\nretries = 3\nretry_backoff_ms = 50\n"
        ))
        .expect("valid");
        assert_eq!(m.durable.retries, 3);
        let waits: Vec<u128> = (1..=3).map(|r| m.durable.backoff(r).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200]);
        let slow = parse(&format!(
            "{MINIMAL}[durable]\njournal = true\nretries = 10\nretry_backoff_ms = 40000\n"
        ))
        .expect("valid");
        assert_eq!(slow.durable.backoff(2), Duration::from_secs(60), "capped");
        assert_eq!(
            parse(MINIMAL).expect("valid").durable.retries,
            0,
            "no retries unless asked"
        );
        let (line, _, message) =
            position(parse(&format!("{MINIMAL}[durable]\nretries = 2\n")).expect_err("no journal"));
        assert_eq!(line, 5);
        assert!(message.contains("needs `journal = true`"), "{message}");
        let (_, _, message) = position(
            parse(&format!(
                "{MINIMAL}[durable]\njournal = true\nretries = 11\n"
            ))
            .expect_err("too many"),
        );
        assert!(
            message.contains("durable.retries = 11 is out of range"),
            "{message}"
        );
    }

    #[test]
    fn runs_name_the_agents_it_may_start_and_bound_them() {
        let m = parse(&format!(
            "{MINIMAL}[runs]\nagents = [\"reviewer\", \"secret-guard\"]\nparallel = 2\n"
        ))
        .expect("valid");
        assert!(m.runs.any() && m.runs.allows("reviewer") && !m.runs.allows("echo"));
        assert_eq!(
            (m.runs.parallel, m.runs.max),
            (2, DEFAULT_SUB_RUNS_MAX as u32)
        );
        assert!(
            !parse(MINIMAL).expect("valid").runs.any(),
            "none unless asked"
        );
        let (line, _, message) = position(
            parse(&format!("{MINIMAL}[runs]\nagents = [\"../etc\"]\n")).expect_err("a path"),
        );
        assert_eq!(line, 5);
        assert!(
            message.contains("runs.agents: invalid agent name"),
            "{message}"
        );
        let (_, _, message) = position(
            parse(&format!(
                "{MINIMAL}[runs]\nagents = [\"a\"]\nparallel = 0\n"
            ))
            .expect_err("none at once"),
        );
        assert!(
            message.contains("runs.parallel = 0 is out of range"),
            "{message}"
        );
    }

    #[test]
    fn tools_allow_only_listed_servers_and_tools() {
        let m = parse(&format!(
            "{MINIMAL}[tools]\nservers = [\"time\", \"git\"]\nallow = [\"time/get_current_time\"]\n"
        ))
        .expect("valid");
        assert!(m.tools.allows("time", "get_current_time"));
        assert!(!m.tools.allows("time", "convert_time"));
        assert!(
            !m.tools.allows("git", "git_log"),
            "allow narrows every server"
        );
        assert!(!m.tools.allows("fs", "read_file"));
        let open = parse(&format!("{MINIMAL}[tools]\nservers = [\"git\"]\n")).expect("valid");
        assert!(open.tools.allows("git", "git_log"));
        let (line, _, message) = position(
            parse(&format!(
                "{MINIMAL}[tools]\nservers = [\"time\"]\nallow = [\"fs/read_file\"]\n"
            ))
            .expect_err("unlisted server"),
        );
        assert_eq!(line, 6);
        assert!(message.contains("tools.servers"), "{message}");
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let (line, column, message) =
            position(parse(&format!("{MINIMAL}[limits]\ncolour = 3\n")).expect_err("unknown"));
        assert_eq!((line, column), (5, 1));
        assert!(message.contains("colour"), "{message}");
    }

    #[test]
    fn wrong_type_and_out_of_range_values_are_located() {
        let (line, column, _) = position(
            parse(&format!("{MINIMAL}[limits]\ntimeout_ms = \"soon\"\n")).expect_err("type"),
        );
        assert_eq!((line, column), (5, 14));
        let (line, _, message) =
            position(parse(&format!("{MINIMAL}[limits]\nmemory_mb = 0\n")).expect_err("range"));
        assert_eq!(line, 5);
        assert!(message.contains("memory_mb"), "{message}");
    }

    #[test]
    fn component_must_stay_inside_the_agent_directory() {
        for bad in ["../other.wasm", "/etc/passwd", ""] {
            let text = MINIMAL.replace("echo.wasm", bad);
            let (line, _, _) = position(parse(&text).expect_err(bad));
            assert_eq!(line, 3);
        }
    }

    #[test]
    fn name_must_match_directory_and_pin_must_be_hex() {
        let (line, _, message) =
            position(parse(&MINIMAL.replace("\"echo\"", "\"other\"")).expect_err("name"));
        assert_eq!(line, 1);
        assert!(message.contains("directory"), "{message}");
        let (line, _, _) =
            position(parse(&format!("{MINIMAL}sha256 = \"abc\"\n")).expect_err("pin"));
        assert_eq!(line, 4);
        let pin = "ab".repeat(32);
        let m = parse(&format!("{MINIMAL}sha256 = \"{pin}\"\n")).expect("pin ok");
        assert_eq!(m.sha256, Some([0xab; 32]));
    }

    #[test]
    fn config_values_render_as_text_and_tables_are_refused() {
        let m = parse(&format!(
            "{MINIMAL}[config]\ngreeting = \"hi\"\nretries = 3\nloud = true\n"
        ))
        .expect("valid");
        assert_eq!(m.config["greeting"], "hi");
        assert_eq!(m.config["retries"], "3");
        assert_eq!(m.config["loud"], "true");
        let (line, _, _) =
            position(parse(&format!("{MINIMAL}[config]\nlist = [1]\n")).expect_err("array"));
        assert_eq!(line, 5);
    }

    #[test]
    fn preopens_resolve_against_the_agent_or_the_work_dir() {
        let m = parse(&format!(
            "{MINIMAL}[[preopens]]\nhost = \"data\"\nguest = \"/data\"\n\
             [[preopens]]\nhost = \".\"\nguest = \"/repo\"\nrelative_to = \"work_dir\"\n"
        ))
        .expect("valid");
        assert_eq!(m.preopens[0].host, Path::new("/home/x/agents/echo/data"));
        assert_eq!(m.preopens[0].base, PreopenBase::AgentDir);
        assert_eq!(m.preopens[1].host, Path::new("."));
        assert_eq!(m.preopens[1].base, PreopenBase::WorkDir);
        let (line, _, message) = position(
            parse(&format!(
                "{MINIMAL}[[preopens]]\nhost = \".\"\nguest = \"/r\"\nrelative_to = \"home\"\n"
            ))
            .expect_err("bad base"),
        );
        assert_eq!(line, 7);
        assert!(message.contains("work_dir"), "{message}");
        let (line, _, _) = position(
            parse(&format!(
                "{MINIMAL}[[preopens]]\nhost = \"/etc\"\nguest = \"/r\"\nrelative_to = \"work_dir\"\n"
            ))
            .expect_err("absolute"),
        );
        assert_eq!(line, 5);
    }

    #[test]
    fn malformed_toml_is_located() {
        let (line, _, _) = position(parse("name = \"echo\"\nversion = \n").expect_err("syntax"));
        assert_eq!(line, 2);
    }
}
