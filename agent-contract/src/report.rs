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
    /// The run used the memory store: it read or wrote memory, journaled a step, read its
    /// journal, or looked up a consent. `false`: it touched none of it, and its record went
    /// to the run log (or, in a report the spawner wrote or rebuilt from a record, not
    /// known). `spawner serve` learns
    /// from it which agents' spares should open the store ahead of their request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub used_store: bool,
}

impl RunReport {
    /// The report of a run that ended `status` with `error`, and no output: one the
    /// spawner writes for a run agent-exec did not finish, or never started.
    pub fn failed(
        run_id: String,
        agent: String,
        status: Outcome,
        error: String,
        timings: PhaseTimings,
    ) -> RunReport {
        RunReport {
            run_id,
            agent,
            status,
            exit_code: status.exit_code(),
            output: None,
            output_base64: None,
            error: Some(error),
            cache_hit: None,
            timings,
            verdict: None,
            used_store: false,
        }
    }

    /// Attach `output`: as text when it is UTF-8 and its JSON string is no longer than its
    /// base64 would be, otherwise as base64. Text that is mostly control characters
    /// (each escaped as `\u00XX`, six bytes for one) goes as base64, so no answer's report
    /// is more than 4/3 of the answer.
    pub fn with_output(mut self, output: Vec<u8>) -> RunReport {
        use base64::Engine as _;
        match String::from_utf8(output) {
            Ok(text) if json_string_len(&text) <= base64_len(text.len()) => {
                self.output = Some(text);
            }
            Ok(text) => {
                self.output_base64 =
                    Some(base64::engine::general_purpose::STANDARD.encode(text.as_bytes()));
            }
            Err(e) => {
                self.output_base64 =
                    Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()));
            }
        }
        self
    }

    /// The answer's bytes, from `output` or `output_base64`; `None` when the report has
    /// neither, an error when the base64 is invalid.
    pub fn output_bytes(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        use base64::Engine as _;
        match (&self.output, &self.output_base64) {
            (Some(text), _) => Ok(Some(text.clone().into_bytes())),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Length of `text` as a JSON string, quotes excluded (as serde_json escapes it).
fn json_string_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Length of `n` bytes as padded base64.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        RunReport {
            run_id: "r".into(),
            agent: "a".into(),
            status: Outcome::Ok,
            exit_code: 0,
            output: None,
            output_base64: None,
            error: None,
            cache_hit: None,
            timings: PhaseTimings::default(),
            verdict: None,
            used_store: false,
        }
    }

    #[test]
    fn an_answer_travels_as_text_or_base64_whichever_is_smaller_and_round_trips() {
        let cases: [(&[u8], bool); 5] = [
            (b"plain text \"quoted\"\nand lines", true),
            ("naïve café, 日本語, 🏳️‍🌈".as_bytes(), true),
            (&[1u8; 300], false),
            (&[0xff, 0xfe, 0x00], false),
            (b"", true),
        ];
        for (bytes, as_text) in cases {
            let r = report().with_output(bytes.to_vec());
            assert_eq!(r.output.is_some(), as_text, "{bytes:?}");
            let json = serde_json::to_vec(&r).expect("serialize");
            let back: RunReport = serde_json::from_slice(&json).expect("parse");
            assert_eq!(back.output_bytes().expect("decode").as_deref(), Some(bytes));
            // The answer's part of the report is at most 4/3 of it (and 4 bytes of padding).
            let part = r.output.as_ref().map_or_else(
                || r.output_base64.as_ref().map_or(0, String::len),
                |t| serde_json::to_string(t).expect("json").len() - 2,
            );
            assert!(part <= bytes.len().div_ceil(3) * 4, "{bytes:?}");
        }
    }

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

/// `YYYY-MM-DD HH:MM:SS` in UTC, from milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod utc_tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_412_096_000), "2026-11-23 05:34:56");
    }
}
