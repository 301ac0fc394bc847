//! `spawner run`: one request, in a fresh agent-exec.

use std::io::{IsTerminal, Read, Write};

use agent_contract::{Home, LogFormat, Outcome, OutputFormat};

use crate::cancel::StopReason;
use crate::cli::RunArgs;
use crate::exit::{Interrupted, UsageError};
use crate::request::{Finished, Request};

/// Run the agent once and exit with its outcome.
pub fn execute(home: &Home, args: RunArgs) -> anyhow::Result<Outcome> {
    let input = read_input(&args)?;
    let request = Request {
        run_id: crate::run_id::new_run_id(),
        agent: args.agent.clone(),
        input,
        timeout: args.timeout,
        output: if args.json {
            OutputFormat::Json
        } else {
            OutputFormat::Raw
        },
        log_format: if args.json {
            LogFormat::Json
        } else {
            LogFormat::Human
        },
        log_level: args
            .log_level
            .clone()
            .or_else(crate::request::log_level_from_env),
        work_dir: std::env::current_dir().ok(),
        hook: None,
        // A JSON answer is one report, whichever process writes it (see `finish`).
        capture_stdout: args.json,
        stream_llm: args.stream,
        journal: agent_contract::envelope::JournalMode::Record,
        attempt: 1,
        parent_run_id: None,
    };
    let finished = crate::request::execute_from_command_line(home, &request, args.max_running)?;
    finish(&finished, args.json)
}

/// After a run from the command line: with `json`, the one report of the run (agent-exec's,
/// captured, when it wrote one whole, else the spawner's); without, agent-exec has
/// answered on our standard output itself, and when it did not finish the spawner says
/// why. A signal to the spawner becomes its own exit. The outcome to exit with.
pub fn finish(finished: &Finished, json: bool) -> anyhow::Result<Outcome> {
    if json {
        let mut stdout = std::io::stdout().lock();
        // agent-exec writes its report after recording the run: killed after writing it,
        // its report and the record agree, and the spawner's adds nothing.
        let whole = serde_json::from_slice::<agent_contract::RunReport>(&finished.stdout).is_ok();
        match &finished.spawner_report {
            Some(report) if !whole => {
                serde_json::to_writer(&mut stdout, report)?;
                stdout.write_all(b"\n")?;
            }
            _ => stdout.write_all(&finished.stdout)?,
        }
    }
    let Some(report) = &finished.spawner_report else {
        return Ok(finished.outcome);
    };
    if let Some(StopReason::Signal(sig)) = finished.stopped {
        return Err(Interrupted(sig).into());
    }
    if !json {
        crate::say!(
            "spawner: {}: {}",
            if finished.answer_lost() {
                "warning"
            } else {
                "error"
            },
            report.error.as_deref().unwrap_or("the run failed")
        );
    }
    Ok(finished.outcome)
}

/// The input: the words given, else the file, else standard input when it is not a
/// terminal, else nothing.
pub fn read_input(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    if !args.input.is_empty() {
        return Ok(args.input.join(" ").into_bytes());
    }
    match &args.input_file {
        Some(path) if path.as_os_str() != "-" => {
            let file = std::fs::File::open(path).map_err(|e| {
                UsageError(format!("cannot read input file {}: {e}", path.display()))
            })?;
            read_limited(file)
        }
        Some(_) => read_limited(std::io::stdin().lock()),
        None => read_stdin(),
    }
}

/// Standard input, up to the input limit; nothing when it is a terminal (nobody is going
/// to type a request).
pub fn read_stdin() -> anyhow::Result<Vec<u8>> {
    if std::io::stdin().is_terminal() {
        return Ok(Vec::new());
    }
    read_limited(std::io::stdin().lock())
}

/// All of `reader`, up to the input limit; over it is a usage error.
pub fn read_limited(reader: impl Read) -> anyhow::Result<Vec<u8>> {
    let limit = agent_contract::envelope::MAX_INPUT_BYTES;
    let mut input = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut input)
        .map_err(|e| UsageError(format!("cannot read the input: {e}")))?;
    if input.len() as u64 > limit {
        return Err(UsageError(format!("input is over the limit of {limit} bytes")).into());
    }
    Ok(input)
}
