//! Where an attempt's agent-exec runs: the seam between a request ([`crate::request`]:
//! its envelope header, its record, its retries, its sub-runs) and the machine that runs
//! it. [`Local`] starts a fresh agent-exec on this machine under the spawn policy
//! ([`crate::spawn`]), or hands the request to one of the daemon's spares; a cluster
//! backend or a remote runner is one more implementation of [`Executor`], in a module of
//! its own.

use agent_contract::Outcome;
use agent_contract::RequestHeader;
use agent_contract::envelope::{
    COMPILE_FIRST_EXIT_CODE, CompileStep, compile_program_beside, write_envelope,
};
use anyhow::Context;

use crate::cancel::Stop;
use crate::spawn::{COMPILE_DEADLINE, Exit, Spawn, SpawnPolicy, Started, StderrSink, Termination};

/// Runs one attempt of a request somewhere. Shared by the threads of a run's sub-runs.
pub trait Executor: Sync {
    /// Run `job`: hand its header and input to a fresh agent-exec, compile the agent's
    /// component first when agent-exec finds it not compiled (outside the request's
    /// deadline), and wait until agent-exec ends, is killed at its deadline, or
    /// `job.stop` stops it. Its standard error goes to `on_stderr` as it comes, when
    /// given (else to ours).
    fn run(&self, job: Job<'_>, on_stderr: Option<StderrSink<'_>>) -> anyhow::Result<Ran>;
}

/// One attempt, ready to run.
pub struct Job<'a> {
    /// The program, its deadline and limits.
    pub policy: &'a SpawnPolicy,
    /// The envelope's header.
    pub header: RequestHeader,
    /// The request's input, after the header.
    pub input: &'a [u8],
    /// Capture agent-exec's standard output (returned in [`Exit::stdout`]).
    pub capture_stdout: bool,
    /// With `capture_stdout`: take the answer when agent-exec closes its output, and
    /// leave its exit to [`Exit::exiting`] ([`Spawn::reap_after_answer`]).
    pub reap_after_answer: bool,
    /// What stops it early.
    pub stop: Stop<'a>,
}

/// How an attempt ran.
#[derive(Debug)]
pub struct Ran {
    /// How the last process it started ended.
    pub exit: Exit,
    /// Set when the compile step ended the run: its outcome and why. agent-exec did not
    /// run, so nothing recorded the run.
    pub failed_compile: Option<(Outcome, String)>,
}

/// A source of started agent-execs (the daemon's spares), given the agent to run.
pub type Spares<'a> = &'a (dyn Fn(&str) -> Option<Started> + Sync);

/// This machine: a fresh agent-exec per attempt, or one of the daemon's spares (started
/// with the same output settings as the requests it serves).
#[derive(Clone, Copy)]
pub struct Local<'a> {
    spares: Option<Spares<'a>>,
}

impl<'a> Local<'a> {
    /// A fresh agent-exec per attempt.
    pub const FRESH: Local<'static> = Local { spares: None };

    /// A spare from `spares` when one is there and alive, else a fresh agent-exec.
    pub fn with_spares(spares: Spares<'a>) -> Local<'a> {
        Local {
            spares: Some(spares),
        }
    }
}

impl Executor for Local<'_> {
    fn run(&self, job: Job<'_>, mut on_stderr: Option<StderrSink<'_>>) -> anyhow::Result<Ran> {
        let Job {
            policy,
            header,
            input,
            capture_stdout,
            stop,
            reap_after_answer,
        } = job;
        let mut envelope = Vec::with_capacity(input.len() + 512);
        write_envelope(&mut envelope, &header, input).context("cannot build the request")?;
        let spawn = Spawn {
            policy,
            stdin: &envelope,
            capture_stdout,
            // Shortens the callback's lifetime to this call's.
            on_stderr: on_stderr.as_deref_mut().map(|f| f as &mut dyn FnMut(&[u8])),
            stop,
            reap_after_answer,
        };
        let mut exit = match self.spares.and_then(|take| take(&header.agent)) {
            Some(spare) if spare.is_alive() => crate::spawn::feed(spare, spawn)?,
            // A spare that died while it waited is reaped on drop.
            Some(_dead) => crate::spawn::run(spawn)?,
            None => crate::spawn::run(spawn)?,
        };
        let mut failed_compile: Option<(Outcome, String)> = None;
        if exit.termination == Termination::Exited(i32::from(COMPILE_FIRST_EXIT_CODE)) {
            // No compiled entry: compile it with no deadline but the compile's own, then run
            // the request in a fresh agent-exec, which finds the entry (or, if the compile
            // failed, runs the compile step itself and records why, as for any run).
            let agent = &header.agent;
            let compile = SpawnPolicy::for_compile(
                compile_program_beside(&policy.program),
                &header.home,
                agent,
            );
            let compiled = crate::spawn::run(Spawn {
                policy: &compile,
                stdin: &[],
                capture_stdout: false,
                on_stderr: on_stderr.as_deref_mut().map(|f| f as &mut dyn FnMut(&[u8])),
                stop,
                reap_after_answer: false,
            })?;
            exit = match compiled.termination {
                // Stopped while compiling: the run ends so, and is recorded by the caller.
                Termination::Stopped => compiled,
                // The compile itself was killed: the run does not start. Another try here
                // would compile again inside agent-exec, under the request's own limits.
                Termination::Signaled(sig) => {
                    failed_compile = Some((
                        Outcome::Killed,
                        format!(
                            "the compile step ({}) was killed by signal {sig}; agent {agent:?} did not start: run it again to compile it anew",
                            compile.program.display(),
                        ),
                    ));
                    compiled
                }
                Termination::DeadlineKilled => {
                    failed_compile = Some((
                        Outcome::Timeout,
                        format!(
                            "compiling agent {agent:?} took longer than the compile step's {} s limit; it was killed and the agent did not start",
                            COMPILE_DEADLINE.as_secs()
                        ),
                    ));
                    compiled
                }
                Termination::Exited(_) | Termination::Answered => {
                    let header = RequestHeader {
                        compile: CompileStep::Done,
                        ..header
                    };
                    envelope.clear();
                    write_envelope(&mut envelope, &header, input)
                        .context("cannot build the request")?;
                    crate::spawn::run(Spawn {
                        policy,
                        stdin: &envelope,
                        capture_stdout,
                        on_stderr: on_stderr.map(|f| f as &mut dyn FnMut(&[u8])),
                        stop,
                        reap_after_answer,
                    })?
                }
            };
        }
        Ok(Ran {
            exit,
            failed_compile,
        })
    }
}
