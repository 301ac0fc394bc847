//! The lean cold start issue's targets, in one place: each section of the benchmark hands
//! its figures here, and each target becomes a PASS/FAIL line of the report (never an
//! assertion: timings on shared machines are noisy).

use super::measure::Stats;
use super::report::{Report, Target};

/// `spawner run echo hi`, median (ms).
const ECHO_MEDIAN_MS: f64 = 2.0;
/// `spawner run echo hi` over `wasmtime run` of the precompiled echo, medians.
const ECHO_OVER_WASMTIME: f64 = 0.35;
/// `spawner run echo hi`: p95 over its median (no fsync tail).
const ECHO_P95_OVER_MEDIAN: f64 = 1.3;
/// agent-exec on echo fed an envelope directly, median (ms).
const EXEC_ECHO_MS: f64 = 1.2;
/// agent-exec on echo, peak RSS (MiB).
const EXEC_ECHO_RSS_MIB: f64 = 6.0;
/// The 4 MB `bulky` component over echo, medians.
const BULKY_OVER_ECHO: f64 = 1.3;
/// The Python agent, median (ms).
const PYTHON_AGENT_MS: f64 = 15.0;
/// The Python agent over `python3 -c pass` in the same run, medians.
const PYTHON_AGENT_OVER_PYTHON: f64 = 1.0;
/// Through the daemon, one client: p50 (ms).
const DAEMON_P50_MS: f64 = 1.0;
/// Through the daemon, 8 clients: runs per second.
const DAEMON_THROUGHPUT: f64 = 1000.0;
/// Through the daemon, 8 clients: p99 over p50.
const DAEMON_P99_OVER_P50: f64 = 4.0;
/// `spawner hook secret-guard` on the PreToolUse event, median (ms), the `sh -c` that runs
/// it included, as Claude Code runs a hook.
const HOOK_MS: f64 = 2.5;

/// What each line of this module is prefixed with.
const ISSUE: &str = "lean cold start";

/// A PASS/FAIL line of the report, named as this issue's.
fn check(report: &mut Report, what: &str, value: f64, unit: &str, target: Target) {
    report.check(&format!("{ISSUE}: {what}"), value, unit, target);
}

/// `spawner run echo`, and against `wasmtime run` where that was measured.
pub fn cold_start(report: &mut Report, echo: &Stats, wasmtime: Option<&Stats>) {
    let median = echo.median();
    check(
        report,
        "`spawner run echo` median",
        median,
        "ms",
        Target::AtMost(ECHO_MEDIAN_MS),
    );
    check(
        report,
        "`spawner run echo` p95 over its median",
        echo.percentile(95.0) / median,
        "×",
        Target::AtMost(ECHO_P95_OVER_MEDIAN),
    );
    match wasmtime {
        Some(w) => {
            check(
                report,
                "`spawner run echo` over `wasmtime run` of the precompiled echo",
                median / w.median(),
                "×",
                Target::AtMost(ECHO_OVER_WASMTIME),
            );
        }
        None => report.not_measured(
            &format!("{ISSUE}: `spawner run echo` over `wasmtime run`"),
            "the wasmtime peer did not run",
        ),
    }
}

/// agent-exec alone: echo's time and peak RSS, bulky against echo, the Python agent.
pub fn exec(
    report: &mut Report,
    echo: (&Stats, u64),
    bulky: &Stats,
    python_agent: &Stats,
    python_c_pass: Option<&Stats>,
) {
    let (echo, echo_rss_kib) = echo;
    check(
        report,
        "agent-exec on echo, median",
        echo.median(),
        "ms",
        Target::AtMost(EXEC_ECHO_MS),
    );
    check(
        report,
        "agent-exec on echo, peak RSS",
        echo_rss_kib as f64 / 1024.0,
        "MiB",
        Target::AtMost(EXEC_ECHO_RSS_MIB),
    );
    check(
        report,
        "the 4 MB bulky over echo",
        bulky.median() / echo.median(),
        "×",
        Target::AtMost(BULKY_OVER_ECHO),
    );
    check(
        report,
        "the Python agent, median",
        python_agent.median(),
        "ms",
        Target::AtMost(PYTHON_AGENT_MS),
    );
    if let Some(p) = python_c_pass {
        check(
            report,
            "the Python agent over `python3 -c pass`",
            python_agent.median() / p.median(),
            "×",
            Target::AtMost(PYTHON_AGENT_OVER_PYTHON),
        );
    }
}

/// Through the daemon: p50 at one client; throughput and p99 over p50 at eight.
pub fn daemon(report: &mut Report, one_client: &Stats, eight_clients: (&Stats, f64)) {
    let (eight, runs_per_s) = eight_clients;
    check(
        report,
        "daemon p50 at 1 client",
        one_client.median(),
        "ms",
        Target::AtMost(DAEMON_P50_MS),
    );
    check(
        report,
        "daemon throughput at 8 clients",
        runs_per_s,
        "runs/s",
        Target::AtLeast(DAEMON_THROUGHPUT),
    );
    check(
        report,
        "daemon p99 over p50 at 8 clients",
        eight.percentile(99.0) / eight.median(),
        "×",
        Target::AtMost(DAEMON_P99_OVER_P50),
    );
}

/// The Claude Code hook round trip.
pub fn hook(report: &mut Report, hook: &Stats) {
    check(
        report,
        "`spawner hook secret-guard` median",
        hook.median(),
        "ms",
        Target::AtMost(HOOK_MS),
    );
}
