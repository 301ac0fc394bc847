//! Sub-runs: the wire between a parent run's agent-exec and the spawner that runs the
//! parent, which starts its children (each a fresh agent-exec, under the same spawn
//! policy and admission control as any request) and hands back how they ended.
//!
//! The spawner listens on an abstract Unix socket whose name the envelope carries
//! ([`SubRunChannel`]), one per parent run, and accepts only its own child process of
//! its own user. Each message is one JSON line: agent-exec sends [`Call`]s, the spawner
//! answers each with one [`Answer`]. A `start` is answered once the child is queued, not
//! when it ends; a `join` when it has ended.
//!
//! A child's run id is its parent's, a dot and its number ([`child_run_id`]): the same on
//! every attempt of the parent, so a resumed parent is handed the answer of a child that
//! ended before instead of starting it again.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::RunReport;

/// Where a parent run asks for sub-runs, in its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRunChannel {
    /// The spawner's abstract socket name (without the leading NUL).
    pub socket: String,
}

/// What a parent's agent-exec asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Call {
    /// Start child `child` (numbered from 0 in the order of the parent's calls), a run of
    /// `agent` with this input.
    Start {
        /// Its number.
        child: u32,
        /// The agent to run.
        agent: String,
        /// Its input, as base64.
        input_base64: String,
    },
    /// Wait for child `child` to end.
    Join {
        /// Its number.
        child: u32,
    },
}

/// The spawner's answer to one [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum Answer {
    /// The child is queued; it starts when a slot is free.
    Started {
        /// Its number.
        child: u32,
        /// Its run id.
        run_id: String,
    },
    /// The child ended: its report (status, answer, error).
    Joined {
        /// Its number.
        child: u32,
        /// How it ended.
        report: Box<RunReport>,
    },
    /// The call was refused.
    Refused {
        /// Why, in a word.
        why: Refusal,
        /// What to do about it.
        message: String,
    },
}

/// Why a [`Call`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The agent is not in the parent's `[runs] agents`, the parent has started its
    /// `[runs] max`, or sub-runs nest too deep.
    NotAllowed,
    /// No such child, or a child number out of order, or input that is not acceptable.
    InvalidInput,
    /// The spawner cannot run it (its agent cannot be found or read).
    Unavailable,
}

/// A child's run id: its parent's, a dot, and its number.
pub fn child_run_id(parent_run_id: &str, child: u32) -> String {
    format!("{parent_run_id}.{child}")
}

/// The parent of a sub-run, from its id: `None` for a run a caller asked for.
pub fn parent_run_id(run_id: &str) -> Option<&str> {
    let (parent, child) = run_id.rsplit_once('.')?;
    child.parse::<u32>().ok().map(|_| parent)
}

/// The longest line either side sends: an input at its limit as base64, or a report.
pub const MAX_LINE_BYTES: u64 =
    crate::envelope::MAX_REPORT_BYTES + crate::envelope::MAX_INPUT_BYTES / 3 * 4 + 64 * 1024;

/// Write one message as a JSON line.
pub fn write_message(w: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Read one message; `None` at the end of the stream.
pub fn read_message<T: for<'de> Deserialize<'de>>(
    r: &mut impl BufRead,
) -> std::io::Result<Option<T>> {
    use std::io::Read as _;
    let mut line = Vec::new();
    r.take(MAX_LINE_BYTES + 1).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a sub-run message is cut short or longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_name_their_parent() {
        let id = child_run_id("0190abc", 12);
        assert_eq!(id, "0190abc.12");
        assert_eq!(parent_run_id(&id), Some("0190abc"));
        assert_eq!(parent_run_id(&child_run_id(&id, 0)), Some(id.as_str()));
        assert_eq!(parent_run_id("0190abc"), None);
        assert_eq!(parent_run_id("a.b"), None);
    }

    #[test]
    fn messages_round_trip_as_lines() {
        let mut wire = Vec::new();
        let call = Call::Start {
            child: 0,
            agent: "echo".into(),
            input_base64: "aMOpbGxv".into(),
        };
        write_message(&mut wire, &call).expect("written");
        write_message(&mut wire, &Call::Join { child: 0 }).expect("written");
        let mut r = std::io::BufReader::new(wire.as_slice());
        assert_eq!(read_message::<Call>(&mut r).expect("read"), Some(call));
        assert_eq!(
            read_message::<Call>(&mut r).expect("read"),
            Some(Call::Join { child: 0 })
        );
        assert_eq!(read_message::<Call>(&mut r).expect("end"), None);
        let cut = b"{\"op\":\"join\"";
        let e = read_message::<Call>(&mut std::io::BufReader::new(&cut[..])).expect_err("cut");
        assert!(e.to_string().contains("cut short"), "{e}");
    }
}
