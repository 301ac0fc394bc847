//! Getting a component compiled: the compile step, `agent-compile <home> <agent>`.
//!
//! agent-exec is built without a compiler (see [`crate::engine`]). A request that finds no
//! compiled entry either exits at once for its caller to compile it (the spawner's
//! requests, `CompileStep::Defer`: the compile runs before the request's deadline starts)
//! or, when it was sent to agent-exec directly, runs agent-compile itself as a child and
//! waits ([`run_helper`]), before its own deadline is armed. With the `compiler` feature,
//! which only the agent-compile binary is built with, this module also holds the step
//! itself ([`compile`], [`main_entry`]).

use std::path::Path;

use agent_contract::{Manifest, Outcome};

use crate::ExecError;

/// What agent-compile's error line starts with; the rest is the error's text.
const ERROR_PREFIX: &str = "agent-compile: error: ";

/// Run `agent-compile <home> <agent>` (beside this executable) and wait for it. Its
/// warnings are logged here; its failure becomes [`ExecError::CompileFailed`], with its
/// outcome and its message.
pub(crate) fn run_helper(home: &Path, manifest: &Manifest) -> Result<(), ExecError> {
    let program = std::env::current_exe()
        .map(|me| agent_contract::envelope::compile_program_beside(&me))
        .map_err(|e| ExecError::Internal(format!("cannot locate agent-exec's executable: {e}")))?;
    let out = std::process::Command::new(&program)
        .arg(home)
        .arg(&manifest.name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| {
            ExecError::Internal(format!(
                "cannot run the compile step {}: {e}",
                program.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    let mut error = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match line.strip_prefix(ERROR_PREFIX) {
            Some(message) => error = Some(message.to_owned()),
            None if crate::logging::enabled(tracing::Level::WARN) => tracing::warn!("{line}"),
            None => {}
        }
    }
    if out.status.success() {
        return Ok(());
    }
    let outcome = out
        .status
        .code()
        .and_then(Outcome::from_exit_code)
        .unwrap_or(Outcome::Internal);
    Err(ExecError::CompileFailed {
        outcome,
        message: error.unwrap_or_else(|| {
            format!(
                "the compile step {} failed ({})",
                program.display(),
                out.status
            )
        }),
    })
}

/// `agent-compile <home> <agent>`: compile the agent's component into the home's compiled
/// cache, unless a usable entry is there already; the exit code is the failure's outcome.
#[cfg(feature = "compiler")]
pub fn main_entry() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(home), Some(agent), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("agent-compile: usage: agent-compile <home> <agent>");
        return std::process::ExitCode::from(Outcome::Usage.exit_code());
    };
    match compile(Path::new(&home), &agent.to_string_lossy()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{ERROR_PREFIX}{e}");
            std::process::ExitCode::from(e.outcome().exit_code())
        }
    }
}

/// Compile the agent's component into `home`'s compiled cache, unless a usable entry is
/// there already (one compile per entry at a time: see [`crate::cache`]).
#[cfg(feature = "compiler")]
pub fn compile(home: &Path, agent: &str) -> Result<(), ExecError> {
    let home = agent_contract::Home::new(home);
    let manifest = Manifest::load(&home.agent_manifest(agent)?)?;
    let fuel = manifest.limits.fuel.is_some();
    let engine =
        crate::engine::build(fuel).map_err(|e| ExecError::Internal(format!("engine: {e:#}")))?;
    let entry = crate::cache::entry_path(&home.component_cache_dir(), &manifest.component, fuel);
    let loaded = crate::cache::compile(&engine, &entry, &manifest, fuel)
        .map_err(|e| crate::run::cache_error(e, &manifest))?;
    if let Some(why) = &loaded.rejected_entry {
        eprintln!(
            "agent-compile: warning: compiled-cache entry {} rejected and rebuilt: {why}",
            entry.display()
        );
    }
    Ok(())
}
