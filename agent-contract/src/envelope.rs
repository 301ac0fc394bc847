//! The request envelope `spawner` writes on `agent-exec`'s standard input: one line of
//! JSON ([`RequestHeader`]), then the raw input bytes until end of file. Raw bytes keep
//! binary input intact and cost nothing to encode.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of the envelope format; `agent-exec` refuses any other.
pub const ENVELOPE_VERSION: u32 = 1;

/// Largest input accepted, so a runaway producer cannot exhaust memory.
pub const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Largest answer an agent may give. A run whose answer is larger fails as an agent error
/// naming the limit, on every path (`spawner run`, the daemon, hooks) alike. In a JSON
/// report the answer travels as text or as base64, whichever is smaller, so a report of an
/// answer within this limit is at most 4/3 of it plus a little: see
/// [`MAX_REPORT_BYTES`].
pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Largest JSON report of one run: the answer at its limit as base64 (4/3), and 1 MiB for
/// the rest (error, verdict, timings). What a reader of reports needs to keep.
pub const MAX_REPORT_BYTES: u64 = MAX_OUTPUT_BYTES / 3 * 4 + 4 + 1024 * 1024;

/// Largest header line accepted. A hook's event travels in the header, normalized from a
/// caller's payload of up to [`MAX_INPUT_BYTES`]: the payload's text appears in it at most
/// about 3.5 times over (a tool's input as JSON text, escaped once more; the lines it
/// writes, a few bytes a line: see `hook::FileChange`), so any event from a payload within
/// the limit fits.
pub const MAX_HEADER_BYTES: u64 = 4 * MAX_INPUT_BYTES + 64 * 1024;

/// Everything about a request except its input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeader {
    /// Envelope format version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Unique id of this run.
    pub run_id: String,
    /// The agent to run.
    pub agent: String,
    /// The runtime's home directory.
    pub home: PathBuf,
    /// Overrides the manifest's deadline, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How the answer is written on standard output.
    #[serde(default)]
    pub output: OutputFormat,
    /// How log lines are written on standard error.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Lowest level of log line written: trace, debug, info, warn or error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// When the spawner started the process, in nanoseconds since the Unix epoch; lets
    /// agent-exec measure the time from spawn to `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_at_unix_ns: Option<u64>,
    /// The caller's working directory: where `[[preopens]]` with `relative_to = "work_dir"`
    /// are found. agent-exec's own working directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Set for a hook call: the caller's event, normalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<crate::hook::HookEvent>,
    /// Who compiles the component on a compiled-cache miss.
    #[serde(default)]
    pub compile: CompileStep,
    /// Show the text of the run's LLM answers as it is generated, on standard error (in
    /// the log's format: raw text, or JSON lines `{"llm_text": ...}`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream_llm: bool,
    /// The home's inference broker as the front resolved it; agent-exec resolves it from
    /// its own (cleared) environment when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<crate::layout::BrokerLayout>,
    /// How a durable agent's journal serves this run (ignored for other agents).
    #[serde(default)]
    pub journal: JournalMode,
    /// Which attempt of `run_id` this is: 1, or more for a resume.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Where this run asks for sub-runs, when its agent may start any (`[runs]`) and the
    /// spawner runs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_runs: Option<crate::subruns::SubRunChannel>,
    /// Set for a sub-run: its parent's run id (recorded with the run, which also keeps
    /// its answer for the parent's resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The front marked the run as running in the home's store (`memory_store::running`):
    /// agent-exec holds the marker while it runs, and does not run a run whose marker
    /// is gone (settled as killed because its owner ended first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub marked: bool,
}

fn first_attempt() -> u32 {
    1
}

/// How a durable run uses its journal of host calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalMode {
    /// A new run: every call is made and journaled.
    #[default]
    Record,
    /// Re-run a failed run: calls already journaled are served from the journal (each
    /// must ask what it asked before), later ones are made and journaled.
    Resume,
    /// As `Resume`, accepting a component that has changed since the journal was written
    /// (its calls must still ask what they asked).
    ResumeChanged,
    /// Re-run a finished run from its journal alone, to check that it is reproducible:
    /// no call is made, nothing is written, and the answer must hash as it did.
    Replay,
}

/// Who compiles an agent's component when the compiled cache has no entry for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompileStep {
    /// agent-exec, which runs the compile step itself before it arms the deadline.
    #[default]
    Here,
    /// The caller, outside the request's deadline: agent-exec exits with
    /// [`COMPILE_FIRST_EXIT_CODE`] before anything is recorded, the caller runs
    /// [`COMPILE_PROGRAM`], then sends the request again with [`CompileStep::Done`].
    Defer,
    /// The caller has just compiled it for this request: the run is reported as a cache
    /// miss (it paid for a compile), and a missing entry is compiled as for [`CompileStep::Here`].
    Done,
}

/// The compile step's program (`agent-compile <home> <agent>`), installed beside agent-exec:
/// the one binary that links a compiler.
pub const COMPILE_PROGRAM: &str = "agent-compile";

/// The compile step's path, beside the agent-exec executable at `agent_exec`: where the
/// spawner and agent-exec both look for it.
pub fn compile_program_beside(agent_exec: &std::path::Path) -> PathBuf {
    agent_exec.with_file_name(COMPILE_PROGRAM)
}

/// agent-exec's exit code for "the component is not compiled yet" under
/// [`CompileStep::Defer`]: nothing ran and nothing was recorded. Not an outcome
/// (callers never see it): a word between spawner and agent-exec, outside the outcome
/// table's codes and the shell's (126 and up).
pub const COMPILE_FIRST_EXIT_CODE: u8 = 75;

/// The log levels a request may ask for ([`RequestHeader::log_level`]), most verbose
/// first; agent-exec shows lines at the level asked for and above.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// `level` checked to be one of [`LOG_LEVELS`], in any case; lowercased. The error names
/// the levels there are.
pub fn check_log_level(level: &str) -> Result<String, String> {
    let lower = level.to_ascii_lowercase();
    if LOG_LEVELS.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!(
            "log level {level:?} is not one of {}",
            LOG_LEVELS.join(", ")
        ))
    }
}

/// How `agent-exec` writes its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The agent's output bytes, unchanged; errors on standard error.
    #[default]
    Raw,
    /// One JSON [`RunReport`](crate::RunReport), whatever the outcome.
    Json,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For a person at a terminal.
    #[default]
    Human,
    /// One JSON object per line, for machines.
    Json,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Reading standard input failed.
    #[error("cannot read the request envelope: {0}")]
    Io(#[from] io::Error),
    /// The first line is not a valid header.
    #[error("invalid request envelope header: {0}")]
    Header(#[from] serde_json::Error),
    /// The header names another envelope version.
    #[error("request envelope version {found} is not supported (expected {ENVELOPE_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The header line or the input is over its size limit.
    #[error("request {what} is over the limit of {limit} bytes")]
    TooLarge {
        /// "header" or "input".
        what: &'static str,
        /// The limit.
        limit: u64,
    },
}

/// Write an envelope: the header line, then `input`. A header or an input over its limit is
/// refused here, before anything is written, with the limit named.
pub fn write_envelope(
    mut w: impl Write,
    header: &RequestHeader,
    input: &[u8],
) -> Result<(), EnvelopeError> {
    let mut line = serde_json::to_vec(header)?;
    line.push(b'\n');
    if line.len() as u64 > MAX_HEADER_BYTES {
        return Err(EnvelopeError::TooLarge {
            what: "header",
            limit: MAX_HEADER_BYTES,
        });
    }
    if input.len() as u64 > MAX_INPUT_BYTES {
        return Err(EnvelopeError::TooLarge {
            what: "input",
            limit: MAX_INPUT_BYTES,
        });
    }
    w.write_all(&line)?;
    w.write_all(input)?;
    w.flush()?;
    Ok(())
}

/// Read an envelope: the header line, then the input until end of file.
pub fn read_envelope(r: impl Read) -> Result<(RequestHeader, Vec<u8>), EnvelopeError> {
    let mut r = io::BufReader::new(r);
    let mut line = Vec::new();
    (&mut r)
        .take(MAX_HEADER_BYTES)
        .read_until(b'\n', &mut line)?;
    // A header line without its newline is fine at end of input (no input), but not when
    // it filled the whole limit: then the real line is longer than allowed.
    if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_HEADER_BYTES {
        return Err(EnvelopeError::TooLarge {
            what: "header",
            limit: MAX_HEADER_BYTES,
        });
    }
    let header: RequestHeader = serde_json::from_slice(&line)?;
    if header.v != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version { found: header.v });
    }
    let mut input = Vec::new();
    r.take(MAX_INPUT_BYTES + 1).read_to_end(&mut input)?;
    if input.len() as u64 > MAX_INPUT_BYTES {
        return Err(EnvelopeError::TooLarge {
            what: "input",
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok((header, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RequestHeader {
        RequestHeader {
            v: ENVELOPE_VERSION,
            run_id: "r1".into(),
            agent: "echo".into(),
            home: "/tmp/h".into(),
            timeout_ms: Some(5),
            output: OutputFormat::Json,
            log_format: LogFormat::Human,
            log_level: None,
            spawned_at_unix_ns: Some(42),
            work_dir: None,
            hook: Some(crate::hook::HookEvent::CommitMsg {
                message: "m".into(),
            }),
            compile: CompileStep::Defer,
            stream_llm: false,
            broker: None,
            journal: Default::default(),
            attempt: 1,
            sub_runs: None,
            parent_run_id: None,
            marked: false,
        }
    }

    #[test]
    fn round_trips_binary_input_with_newlines() {
        let input = b"line one\nline two\n\0\xff".to_vec();
        let mut buf = Vec::new();
        write_envelope(&mut buf, &header(), &input).expect("write");
        let (h, i) = read_envelope(&buf[..]).expect("read");
        assert_eq!(h, header());
        assert_eq!(i, input);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let mut h = header();
        h.v = 2;
        let mut buf = Vec::new();
        write_envelope(&mut buf, &h, b"").expect("write");
        assert!(matches!(
            read_envelope(&buf[..]),
            Err(EnvelopeError::Version { found: 2 })
        ));
        assert!(matches!(
            read_envelope(&b"not json\nrest"[..]),
            Err(EnvelopeError::Header(_))
        ));
    }
}
