//! The `runs` host interface: sub-runs this run starts and joins, asked of the spawner
//! that runs this process over the channel its envelope names
//! ([`agent_contract::subruns`]). The spawner starts each child in a fresh agent-exec
//! under its admission control; this side checks the manifest's `[runs]` first, numbers
//! the children in the order they are started, and waits for an answer no longer than
//! the run's deadline.
//!
//! In a durable run, a `join` is journaled with the child's result (a resume or replay
//! is served it); a `start` is not, since it only queues the child, whose id is the same
//! on every attempt: a replay asks the spawner nothing.

use std::io::BufReader;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Instant;

use agent_contract::manifest::SubRunPolicy;
use agent_contract::subruns::{Answer, Call, Refusal, SubRunChannel, read_message, write_message};
use sha2::{Digest, Sha256};

use crate::host::bindings::spawner::agent::runs::{Finished, RunError};

/// This run's sub-runs.
pub struct SubRuns {
    run_id: String,
    policy: SubRunPolicy,
    channel: Option<SubRunChannel>,
    /// Ask the spawner nothing (a replay: every join comes from the journal).
    replay: bool,
    conn: Option<(BufReader<UnixStream>, UnixStream)>,
    /// The children started, by number: the agent and the SHA-256 of the input.
    started: Vec<(String, [u8; 32])>,
}

impl SubRuns {
    /// The sub-runs of run `run_id` under `policy`, asked of `channel`.
    pub fn new(
        run_id: String,
        policy: SubRunPolicy,
        channel: Option<SubRunChannel>,
        replay: bool,
    ) -> SubRuns {
        SubRuns {
            run_id,
            policy,
            channel,
            replay,
            conn: None,
            started: Vec::new(),
        }
    }

    /// What a join of `child` asks, for the journal: its number, agent and input's hash.
    pub fn join_request(&self, child: u32) -> Option<(u32, String, String)> {
        self.started.get(child as usize).map(|(agent, input)| {
            (
                child,
                agent.clone(),
                agent_contract::manifest::to_hex(input),
            )
        })
    }

    /// Start a run of `agent` with `input`: its number.
    pub fn start(
        &mut self,
        agent: String,
        input: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<u32, RunError> {
        let child = u32::try_from(self.started.len()).unwrap_or(u32::MAX);
        if let Some(why) = self.policy.refuses(&self.run_id, child, &agent) {
            return Err(RunError::NotAllowed(why));
        }
        if input.len() as u64 > agent_contract::envelope::MAX_INPUT_BYTES {
            return Err(RunError::InvalidInput(format!(
                "the input is {} bytes, over the limit of {}",
                input.len(),
                agent_contract::envelope::MAX_INPUT_BYTES
            )));
        }
        let input_hash: [u8; 32] = Sha256::digest(&input).into();
        if !self.replay {
            use base64::Engine as _;
            let call = Call::Start {
                child,
                agent: agent.clone(),
                input_base64: base64::engine::general_purpose::STANDARD.encode(&input),
            };
            match self.ask(&call, deadline)? {
                Answer::Started { .. } => {}
                other => return Err(unexpected(other)),
            }
        }
        self.started.push((agent, input_hash));
        Ok(child)
    }

    /// Wait for child `child` to end.
    pub fn join(&mut self, child: u32, deadline: Option<Instant>) -> Result<Finished, RunError> {
        if self.started.get(child as usize).is_none() {
            return Err(RunError::InvalidInput(format!(
                "no sub-run has number {child}: this run has started {}",
                self.started.len()
            )));
        }
        if self.replay {
            return Err(RunError::Unavailable(format!(
                "sub-run {child} is not in the journal: a replay starts no sub-runs"
            )));
        }
        match self.ask(&Call::Join { child }, deadline)? {
            Answer::Joined { report, .. } => Ok(Finished {
                output: report.output_bytes().ok().flatten().unwrap_or_default(),
                run_id: report.run_id,
                status: report.status.to_string(),
                error: report.error,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Send one call and read its answer, by the deadline.
    fn ask(&mut self, call: &Call, deadline: Option<Instant>) -> Result<Answer, RunError> {
        let lost = |e: std::io::Error| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                RunError::Timeout("this run's deadline came before the sub-run's answer".into())
            } else {
                RunError::Unavailable(format!("the spawner that runs sub-runs went away: {e}"))
            }
        };
        if self.conn.is_none() {
            let Some(channel) = &self.channel else {
                return Err(RunError::Unavailable(
                    "no spawner runs this run's sub-runs (agent-exec was started alone): run it with `spawner run`".into(),
                ));
            };
            let addr = SocketAddr::from_abstract_name(channel.socket.as_bytes()).map_err(lost)?;
            let stream = UnixStream::connect_addr(&addr).map_err(lost)?;
            let reader = BufReader::new(stream.try_clone().map_err(lost)?);
            self.conn = Some((reader, stream));
        }
        let Some((reader, writer)) = self.conn.as_mut() else {
            return Err(RunError::Unavailable("no connection to the spawner".into()));
        };
        let left = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(std::time::Duration::from_millis(1))
        });
        writer.set_write_timeout(left).map_err(lost)?;
        reader.get_ref().set_read_timeout(left).map_err(lost)?;
        write_message(writer, call).map_err(lost)?;
        match read_message::<Answer>(reader) {
            Ok(Some(Answer::Refused { why, message })) => Err(match why {
                Refusal::NotAllowed => RunError::NotAllowed(message),
                Refusal::InvalidInput => RunError::InvalidInput(message),
                Refusal::Unavailable => RunError::Unavailable(message),
            }),
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(RunError::Unavailable(
                "the spawner that runs sub-runs closed the channel".into(),
            )),
            Err(e) => {
                // A half-read answer cannot be resumed: later calls find no channel.
                self.conn = None;
                self.channel = None;
                Err(lost(e))
            }
        }
    }
}

fn unexpected(answer: Answer) -> RunError {
    RunError::Unavailable(format!("the spawner answered out of turn: {answer:?}"))
}
