//! The JSON report of one run (`spawner run --json`) and the phase timings it carries.

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// Where a run's time went, in microseconds. A phase that did not happen is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// From the spawner starting the process to agent-exec's `main`.
    pub start_to_main_us: Option<u64>,
    /// Reading the envelope and loading `agent.toml`.
    pub config_us: Option<u64>,
    /// Opening the memory store.
    pub store_us: Option<u64>,
    /// Hashing the component and loading it from the compiled cache (or compiling it).
    pub load_us: Option<u64>,
    /// Linking and instantiating the component.
    pub instantiate_us: Option<u64>,
    /// Running the agent's handler.
    pub handler_us: Option<u64>,
    /// From `main` to the answer being ready. (In the stored run record: to the start of
    /// the commit that stores it, since the record is part of that commit.)
    pub total_us: u64,
}

impl PhaseTimings {
    /// The field names as they appear in JSON reports and `spawner runs --json`, in phase
    /// order, for readers that go by name (the benchmark's table, tests).
    pub const FIELDS: [&'static str; 7] = [
        "start_to_main_us",
        "config_us",
        "store_us",
        "load_us",
        "instantiate_us",
        "handler_us",
        "total_us",
    ];
}

/// The outcome of one run, as written by `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// The run's id; the run record in the store carries the same id.
    pub run_id: String,
    /// The agent that ran.
    pub agent: String,
    /// How the run ended.
    pub status: Outcome,
    /// The process exit code, from [`Outcome::exit_code`].
    pub exit_code: u8,
    /// The agent's output, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The agent's output as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// What went wrong, for any status but `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the compiled component came from the cache; `None` when not loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
    /// Where the time went.
    pub timings: PhaseTimings,
    /// A hook's verdict, when the agent gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::hook::Verdict>,
}

impl RunReport {
    /// Attach `output`, as text when it is UTF-8 and as base64 otherwise.
    pub fn with_output(mut self, output: Vec<u8>) -> RunReport {
        match String::from_utf8(output) {
            Ok(text) => self.output = Some(text),
            Err(e) => {
                use base64::Engine as _;
                self.output_base64 =
                    Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()));
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_lists_exactly_the_serialized_names() {
        let json = serde_json::to_value(PhaseTimings::default()).expect("serialize");
        let mut names: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = PhaseTimings::FIELDS.to_vec();
        names.sort_unstable();
        fields.sort_unstable();
        assert_eq!(names, fields);
    }
}
