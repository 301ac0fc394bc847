//! The outcomes of a request: one table for exit codes and run-record status names.
//!
//! | code | status               | meaning                                                       |
//! |-----:|----------------------|---------------------------------------------------------------|
//! | 0    | `ok`                 | the agent answered                                            |
//! | 1    | `internal_error`     | a bug or an unexpected I/O failure in the runtime             |
//! | 2    | `usage_error`        | bad command line, invalid agent name, unreadable input        |
//! | 3    | `not_found`          | no such agent                                                 |
//! | 4    | `config_error`       | `agent.toml` is invalid                                       |
//! | 5    | `component_error`    | component missing, unreadable, not a valid agent, pin mismatch |
//! | 6    | `agent_error`        | the handler returned `invalid-input` or `failed`              |
//! | 7    | `rejected`           | the handler returned `rejected` (a policy verdict)            |
//! | 8    | `trap`               | the agent trapped (panic, `unreachable`, ...)                 |
//! | 9    | `timeout`            | wall-clock deadline or fuel exhausted; the run was stopped    |
//! | 10   | `memory_limit`       | the agent tried to grow past its memory cap                   |
//! | 11   | `store_error`        | the memory store could not be opened or written               |
//! | 12   | `broker_unavailable` | inference was needed and no broker answered                   |
//! | 13   | `busy`               | admission control refused the run; try again later            |
//! | 14   | `killed`             | agent-exec died from a signal it was not sent by the runtime  |
//! | 15   | `diverged`           | a resumed or replayed run did not do what its journal holds   |

use std::fmt;
use std::str::FromStr;

/// How a request ended. Each variant has one exit code and one status name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The agent answered.
    Ok,
    /// A bug or unexpected I/O failure in the runtime itself.
    Internal,
    /// Bad command line, invalid agent name, unreadable input.
    Usage,
    /// No such agent.
    NotFound,
    /// `agent.toml` is invalid.
    Config,
    /// Component missing, unreadable, not a valid agent, or its sha256 pin does not match.
    Component,
    /// The handler returned `invalid-input` or `failed`.
    AgentError,
    /// The handler returned `rejected`.
    Rejected,
    /// The agent trapped.
    Trap,
    /// The wall-clock deadline passed or the fuel ran out.
    Timeout,
    /// The agent tried to grow its memory past the cap.
    MemoryLimit,
    /// The memory store could not be opened or written.
    Store,
    /// Inference was needed and no broker answered.
    BrokerUnavailable,
    /// Admission control refused the run.
    Busy,
    /// agent-exec died from a signal the runtime did not send.
    Killed,
    /// A resumed or replayed durable run asked its host something else than its journal
    /// holds, or its replay answered otherwise.
    Diverged,
}

impl Outcome {
    /// Whether a run that ended so may end otherwise when run on (a durable run's retry):
    /// a failure in the agent (its typed errors included, `invalid-input` too), its host
    /// calls, its deadline or the runtime; not a refusal, a bad request or agent, the
    /// memory cap, admission control or a divergence.
    pub fn may_pass(self) -> bool {
        matches!(
            self,
            Outcome::Internal
                | Outcome::AgentError
                | Outcome::Trap
                | Outcome::Timeout
                | Outcome::Store
                | Outcome::BrokerUnavailable
                | Outcome::Killed
        )
    }

    /// Every outcome, in exit-code order.
    pub const ALL: [Outcome; 16] = [
        Outcome::Ok,
        Outcome::Internal,
        Outcome::Usage,
        Outcome::NotFound,
        Outcome::Config,
        Outcome::Component,
        Outcome::AgentError,
        Outcome::Rejected,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::Store,
        Outcome::BrokerUnavailable,
        Outcome::Busy,
        Outcome::Killed,
        Outcome::Diverged,
    ];

    /// The process exit code for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Internal => 1,
            Outcome::Usage => 2,
            Outcome::NotFound => 3,
            Outcome::Config => 4,
            Outcome::Component => 5,
            Outcome::AgentError => 6,
            Outcome::Rejected => 7,
            Outcome::Trap => 8,
            Outcome::Timeout => 9,
            Outcome::MemoryLimit => 10,
            Outcome::Store => 11,
            Outcome::BrokerUnavailable => 12,
            Outcome::Busy => 13,
            Outcome::Killed => 14,
            Outcome::Diverged => 15,
        }
    }

    /// The outcome an exit code stands for, if it is one of ours.
    pub fn from_exit_code(code: i32) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| i32::from(o.exit_code()) == code)
    }

    /// The status name stored in run records and shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Internal => "internal_error",
            Outcome::Usage => "usage_error",
            Outcome::NotFound => "not_found",
            Outcome::Config => "config_error",
            Outcome::Component => "component_error",
            Outcome::AgentError => "agent_error",
            Outcome::Rejected => "rejected",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::Store => "store_error",
            Outcome::BrokerUnavailable => "broker_unavailable",
            Outcome::Busy => "busy",
            Outcome::Killed => "killed",
            Outcome::Diverged => "diverged",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not in the table.
#[derive(Debug, thiserror::Error)]
#[error("unknown run status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Outcome {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let mut codes = std::collections::HashSet::new();
        for o in Outcome::ALL {
            assert!(codes.insert(o.exit_code()), "duplicate code for {o}");
            assert_eq!(Outcome::from_exit_code(i32::from(o.exit_code())), Some(o));
            assert_eq!(o.as_str().parse::<Outcome>().ok(), Some(o));
        }
        assert_eq!(Outcome::from_exit_code(99), None);
    }
}
