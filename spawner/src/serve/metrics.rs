//! The daemon's metrics, rendered in the Prometheus text format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use agent_contract::Outcome;

use crate::admission::Counts;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Record one observation, in microseconds.
    pub fn observe_us(&self, us: u64) {
        let seconds = us as f64 / 1e6;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

/// Everything the daemon counts.
#[derive(Debug, Default)]
pub struct Metrics {
    runs: [AtomicU64; Outcome::ALL.len()],
    /// Whole run, from admission to the answer.
    pub latency: Histogram,
    /// Process start to the agent's handler: start-to-main, config, store, load, instantiate.
    pub cold_start: Histogram,
    /// Runs that could not be started (agent-exec missing, spawn failure).
    pub spawn_failures: AtomicU64,
    /// Runs refused by admission control.
    pub busy: AtomicU64,
    /// Requests by outcome class.
    pub rpc_errors: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused for another uid.
    pub forbidden: AtomicU64,
}

impl Metrics {
    /// Count a finished run.
    pub fn run_finished(&self, status: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == status) {
            self.runs[i].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, counts: Counts) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP spawner_runs_total Runs finished, by status.\n# TYPE spawner_runs_total counter"
        );
        for (outcome, n) in Outcome::ALL.iter().zip(&self.runs) {
            let _ = writeln!(
                out,
                "spawner_runs_total{{status=\"{outcome}\"}} {}",
                n.load(Relaxed)
            );
        }
        self.latency.render(
            &mut out,
            "spawner_run_duration_seconds",
            "Time from admission to the answer of a run.",
        );
        self.cold_start.render(
            &mut out,
            "spawner_cold_start_seconds",
            "Time from spawn to the agent's handler (start-to-main, config, store, load, instantiate).",
        );
        for (name, help, kind, value) in [
            (
                "spawner_runs_in_flight",
                "Runs holding a slot.",
                "gauge",
                counts.running as u64,
            ),
            (
                "spawner_queue_depth",
                "Runs waiting for a slot.",
                "gauge",
                counts.queued as u64,
            ),
            (
                "spawner_spawn_failures_total",
                "Runs that could not be started.",
                "counter",
                self.spawn_failures.load(Relaxed),
            ),
            (
                "spawner_busy_total",
                "Runs refused by admission control.",
                "counter",
                self.busy.load(Relaxed),
            ),
            (
                "spawner_rpc_errors_total",
                "Requests answered with an error.",
                "counter",
                self.rpc_errors.load(Relaxed),
            ),
            (
                "spawner_connections_total",
                "Connections accepted.",
                "counter",
                self.connections.load(Relaxed),
            ),
            (
                "spawner_forbidden_total",
                "Connections refused: another user.",
                "counter",
                self.forbidden.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counts_by_status() {
        let m = Metrics::default();
        m.latency.observe_us(1_500);
        m.latency.observe_us(40_000);
        m.run_finished(Outcome::Ok);
        m.run_finished(Outcome::Trap);
        let text = m.render(Counts::default());
        assert!(
            text.contains("spawner_run_duration_seconds_bucket{le=\"0.002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("spawner_run_duration_seconds_bucket{le=\"0.05\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("spawner_run_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("spawner_runs_total{status=\"trap\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("spawner_runs_total{status=\"ok\"} 1\n"),
            "{text}"
        );
    }
}
