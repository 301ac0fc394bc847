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

    /// Lowest level of log line shown: trace, debug, info, warn, error [env: SPAWNER_LOG]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
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
