//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Run AI agents on demand, one fresh sandboxed process per request.
#[derive(Debug, Parser)]
#[command(name = "spawner", version, about)]
pub struct Cli {
    /// Home directory (agents, memory store, caches) [env: SPAWNER_HOME]
    /// [default: $XDG_DATA_HOME/spawner or ~/.local/share/spawner]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent once, in a fresh process, and print its answer.
    Run(RunArgs),
    /// List the installed agents and whether each one's agent.toml is valid.
    Agents(AgentsArgs),
    /// Show recent runs from the memory store.
    Runs(RunsArgs),
    /// Run an agent as an editor, coding-assistant or git hook, speaking the caller's
    /// protocol; or install/uninstall such a hook.
    Hook(HookArgs),
    /// Serve the management API (JSON-RPC 2.0, one object per line) on a local socket;
    /// every run is a fresh agent-exec.
    Serve(ServeArgs),
    /// Call a method of the `spawner serve` daemon and print its result.
    Call(CallArgs),
    /// Show what this installation has and whether its parts answer: agents, the
    /// daemon, the inference broker and its models.
    Doctor(DoctorArgs),
    /// Record, withdraw or list the user's consent to an agent's use of a remote LLM
    /// provider (`providers.toml`): without one, such a call is refused.
    Consent(ConsentArgs),
}

/// `spawner doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `spawner serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The socket [default: $XDG_RUNTIME_DIR/spawner/spawner.sock for the default home,
    /// <home>/run/spawner.sock for one chosen with --home or $SPAWNER_HOME]. Under systemd
    /// socket activation the socket systemd passes is used instead.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Runs in flight at once [default: 2 per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_running: Option<u32>,

    /// Runs waiting for a slot; beyond, a request is refused as busy [default: 64 per
    /// running slot].
    #[arg(long, value_name = "N")]
    pub max_queued: Option<usize>,

    /// How long runs in flight may finish after SIGTERM/SIGINT before they are killed.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub grace: Duration,

    /// Close a connection that sends nothing for this long, or that does not finish a
    /// request line within this long of its first byte.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub client_timeout: Duration,

    /// agent-execs kept started ahead of requests, each ready for exactly one (0: start
    /// every run's process when the request comes).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub spares: u8,
}

/// `spawner call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The method: run, agents.list, agents.describe, runs.list, runs.get, runs.active,
    /// runs.cancel, health, capabilities, metrics.
    pub method: String,

    /// The params, a JSON object (e.g. '{"agent":"echo","input":"hi"}').
    pub params: Option<String>,

    /// The daemon's socket [default: as for `spawner serve`].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// `spawner hook`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct HookArgs {
    /// Install or uninstall a hook instead of running one.
    #[command(subcommand)]
    pub action: Option<HookAction>,

    /// The agent that decides (an agent named `install` or `uninstall` cannot be used here).
    #[arg(required = true)]
    pub agent: Option<String>,

    /// The caller's protocol. `auto` tells a Claude Code event (JSON with
    /// `hook_event_name`) from plain input; git hooks must be named.
    #[arg(long, value_enum, default_value_t = HookProtocol::Auto)]
    pub protocol: HookProtocol,

    /// What the caller gets when the hook itself fails (bad input, agent crash or
    /// timeout): `open` lets the action proceed, `closed` blocks it. Default: open for
    /// Claude Code, closed for git hooks and plain.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub fail: Option<FailPolicy>,

    /// Override the agent's deadline: `500ms`, `5s`, `2m`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// The arguments git passes to the hook (commit-msg: the message file; pre-push: the
    /// remote's name and URL).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub hook_args: Vec<String>,
}

/// A hook caller's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookProtocol {
    /// Claude Code when the input is a JSON object with `hook_event_name`, else plain.
    Auto,
    /// Claude Code hooks: JSON event on stdin, JSON decision on stdout.
    ClaudeCode,
    /// git pre-commit: the staged changes are read with `git diff --cached`.
    PreCommit,
    /// git pre-merge-commit: as pre-commit, for the merge being committed.
    PreMergeCommit,
    /// git commit-msg: `$1` is the message file; the agent may rewrite it.
    CommitMsg,
    /// git pre-push: `$1` remote, `$2` URL, ref lines on stdin.
    PrePush,
    /// stdin to the agent, its output to stdout, its verdict as the exit code.
    Plain,
}

/// What a failing hook does to the caller's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailPolicy {
    /// Let the action proceed (with a warning).
    Open,
    /// Block the action.
    Closed,
}

/// `spawner hook install|uninstall`.
#[derive(Debug, Subcommand)]
pub enum HookAction {
    /// Install a git hook that runs an agent, or print the Claude Code settings for one.
    Install(HookInstallArgs),
    /// Remove a git hook installed by `spawner hook install` (restoring the hook it
    /// replaced, if any).
    Uninstall(HookUninstallArgs),
}

/// Which git hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GitHook {
    /// Before a commit is made: the staged changes.
    PreCommit,
    /// Before an automatic (non-conflicting) merge commit is made: what the merge stages.
    PreMergeCommit,
    /// After the message is written: the message file.
    CommitMsg,
    /// Before a push: the refs being pushed.
    PrePush,
}

/// `spawner hook install`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["git", "claude_code"])))]
pub struct HookInstallArgs {
    /// The agent the hook runs.
    pub agent: String,

    /// Install this git hook into the repository (respects `core.hooksPath`).
    #[arg(long, value_enum)]
    pub git: Option<GitHook>,

    /// Print the Claude Code settings snippet for this agent instead.
    #[arg(long)]
    pub claude_code: bool,

    /// Claude Code: the hook event.
    #[arg(long, default_value = "PreToolUse", requires = "claude_code")]
    pub event: String,

    /// Claude Code: the settings' matcher (for tool events, a regular expression on the
    /// tool name) [default: Write|Edit|MultiEdit|NotebookEdit|Bash for PreToolUse,
    /// PostToolUse and PermissionRequest; none for other events].
    #[arg(long, requires = "claude_code")]
    pub matcher: Option<String>,

    /// The repository [default: the current directory].
    #[arg(long, value_name = "DIR", requires = "git")]
    pub repo: Option<PathBuf>,

    /// Replace an existing hook that spawner did not install (it is kept as
    /// `<hook>.spawner-backup` and restored by uninstall).
    #[arg(long, requires = "git")]
    pub force: bool,
}

/// The tools a Claude Code tool hook sees unless `--matcher` says otherwise: those that
/// write files or run commands.
pub const DEFAULT_TOOL_MATCHER: &str = "Write|Edit|MultiEdit|NotebookEdit|Bash";

/// `spawner hook uninstall`.
#[derive(Debug, Args)]
pub struct HookUninstallArgs {
    /// The git hook to remove.
    #[arg(long, value_enum)]
    pub git: GitHook,

    /// The repository [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
}

/// `spawner run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent to run (a directory name under <home>/agents).
    pub agent: String,

    /// The input, as words joined by spaces. Without it (and without --input-file) the
    /// input is read from standard input when that is not a terminal.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub input: Vec<String>,

    /// Read the input from this file (`-` for standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "input")]
    pub input_file: Option<PathBuf>,

    /// Print one JSON report (status, output, error, timings) instead of the raw answer.
    #[arg(long)]
    pub json: bool,

    /// Override the agent's deadline: `500ms`, `5s`, `2m` (a bare number is seconds).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// Show the text of the agent's LLM answers on standard error as it is generated (the
    /// answer itself still goes to standard output when the agent returns).
    #[arg(long)]
    pub stream: bool,

    /// Lowest level of log line shown: trace, debug, info, warn, error [env: SPAWNER_LOG]
    #[arg(long, value_name = "LEVEL", value_parser = agent_contract::envelope::check_log_level)]
    pub log_level: Option<String>,

    /// Send the run to the `spawner serve` daemon instead of spawning it here; the
    /// answer, errors and exit code are the same.
    #[arg(long)]
    pub daemon: bool,

    /// Runs at work at once, this one and its sub-runs' at every depth (a parent waiting
    /// on its sub-runs lends them its slot) [default: 2 per core]. The daemon has its own
    /// (`spawner serve --max-running`).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=4096),
        conflicts_with = "daemon"
    )]
    pub max_running: Option<u32>,

    /// With --daemon: the daemon's socket [default: as for `spawner serve`].
    #[arg(long, value_name = "PATH", requires = "daemon")]
    pub socket: Option<PathBuf>,
}

/// `spawner agents`.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// One JSON object per agent, one per line.
    #[arg(long)]
    pub json: bool,
}

/// `spawner runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// `show <run>`: one run whole; without it, the list.
    #[command(subcommand)]
    pub command: Option<RunsCommand>,

    /// Only this agent's runs.
    #[arg(long)]
    pub agent: Option<String>,

    /// How many runs to show, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,

    /// One JSON object per run, one per line.
    #[arg(long)]
    pub json: bool,
}

/// `spawner consent`.
#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// grant, revoke or list.
    #[command(subcommand)]
    pub command: ConsentCommand,
}

/// What `spawner consent` does.
#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Let `agent` send its chats' messages to `provider` (or its tool calls' arguments to
    /// a tool server of that name).
    Grant {
        /// The agent.
        agent: String,
        /// The provider, as named in providers.toml, or a tool server of tools.toml.
        provider: String,
        /// Lapse after this long: `30m`, `12h`, `7d` (a bare number is seconds).
        #[arg(long, value_parser = parse_expiry, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// Withdraw every grant of `provider` to `agent`.
    Revoke {
        /// The agent.
        agent: String,
        /// The provider.
        provider: String,
    },
    /// Every grant, live or not.
    List {
        /// One JSON object per grant, one per line.
        #[arg(long)]
        json: bool,
    },
}

/// A duration that may also be given in hours or days.
fn parse_expiry(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    for (suffix, secs) in [("d", 86_400u64), ("h", 3_600)] {
        if let Some(n) = text.strip_suffix(suffix)
            && let Ok(n) = n.parse::<u64>()
        {
            return n
                .checked_mul(secs)
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{text} is not a usable duration"));
        }
    }
    parse_duration(text)
}

/// What `spawner runs` can do besides listing.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run's whole record: outcome, timings, and the evidence of its LLM calls.
    Show {
        /// The run's id (from `spawner runs`).
        run_id: String,
        /// The record as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a failed or interrupted run of a durable agent again, in a fresh process, with
    /// the same run id and input: the calls its journal holds are served from it, not
    /// made again, and the run goes on from there.
    Resume {
        /// The run's id (from `spawner runs`).
        run_id: String,
        /// Resume even though the agent's component has changed since the run (its calls
        /// must still ask what they asked).
        #[arg(long)]
        allow_changed: bool,
        /// Deadline for this attempt, e.g. 500ms, 5s, 2m [default: the agent's].
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Answer with a JSON report instead of the output alone.
        #[arg(long)]
        json: bool,
    },
    /// Run a finished run of a durable agent again from its journal alone and check that
    /// it answers the same, byte for byte; nothing is called and nothing written. A
    /// replay that does not says at which step it diverged.
    Replay {
        /// The run's id (from `spawner runs`).
        run_id: String,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every run record, with its evidence and retained content, as JSON lines (newest
    /// first; `--agent` for one agent's).
    Export {
        /// Only this agent's runs.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Delete run records with their evidence and retained content (the agents' memory
    /// stays): the runs named, or all of `--agent`'s.
    Delete {
        /// Run ids.
        run_ids: Vec<String>,
        /// Every run of this agent.
        #[arg(long)]
        agent: Option<String>,
    },
}

/// Parse `500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("invalid duration unit in {text:?}: use ms, s or m")),
    };
    if d.is_zero() {
        return Err("timeout must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
