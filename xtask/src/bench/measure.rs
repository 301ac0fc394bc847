//! Measuring: hyperfine for whole commands, and a spawn loop of our own where hyperfine
//! cannot go (standard input from a file, the child's peak RSS). Both give [`Stats`] over
//! every run's time, so tables, the results file and the plot read the same numbers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// Every run's time of one command, and what the tables show of them.
pub struct Stats {
    /// The command as run.
    pub command: String,
    /// Each run's wall time in milliseconds, sorted.
    pub times_ms: Vec<f64>,
}

impl Stats {
    /// Stats over `times_ms` (any order).
    pub fn new(command: String, mut times_ms: Vec<f64>) -> Stats {
        times_ms.sort_by(f64::total_cmp);
        Stats { command, times_ms }
    }

    /// The value below which `p` percent of the runs fall (nearest rank).
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.times_ms, p)
    }

    pub fn median(&self) -> f64 {
        median(&self.times_ms)
    }

    pub fn mean(&self) -> f64 {
        self.times_ms.iter().sum::<f64>() / self.times_ms.len() as f64
    }

    /// Sample standard deviation, as hyperfine reports it.
    pub fn stddev(&self) -> f64 {
        let n = self.times_ms.len() as f64;
        let mean = self.mean();
        (self
            .times_ms
            .iter()
            .map(|t| (t - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0))
            .sqrt()
    }

    pub fn min(&self) -> f64 {
        self.times_ms.first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.times_ms.last().copied().unwrap_or(f64::NAN)
    }

    /// The machine-readable form written to the results file.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "command": self.command,
            "runs": self.times_ms.len(),
            "median_ms": self.median(),
            "p95_ms": self.percentile(95.0),
            "mean_ms": self.mean(),
            "stddev_ms": self.stddev(),
            "min_ms": self.min(),
            "max_ms": self.max(),
            "times_ms": self.times_ms,
        })
    }
}

/// Nearest-rank percentile of already sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median of already sorted values.
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// How many runs hyperfine and the spawn loop make of each command.
#[derive(Clone, Copy)]
pub struct Runs {
    pub warmup: usize,
    pub runs: usize,
}

impl Runs {
    /// The hyperfine options these stand for, as the tables quote them.
    pub fn hyperfine_options(&self) -> String {
        format!("-N --warmup {} --runs {}", self.warmup, self.runs)
    }
}

/// Run `commands` side by side in one hyperfine run (`-N`: no shell in between); `export`
/// receives hyperfine's own JSON.
pub fn hyperfine(export: &Path, runs: Runs, commands: &[String]) -> anyhow::Result<Vec<Stats>> {
    crate::run(
        Command::new("hyperfine")
            .args(runs.hyperfine_options().split(' '))
            .arg("--export-json")
            .arg(export)
            .args(commands),
    )?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(export)?)
        .with_context(|| format!("cannot parse {}", export.display()))?;
    let results = json["results"]
        .as_array()
        .context("no results in hyperfine's JSON")?;
    if results.len() != commands.len() {
        bail!(
            "hyperfine measured {} commands of {}",
            results.len(),
            commands.len()
        );
    }
    results
        .iter()
        .map(|r| {
            let times = r["times"]
                .as_array()
                .context("no times in hyperfine's JSON")?
                .iter()
                .filter_map(|t| t.as_f64().map(|s| s * 1000.0))
                .collect();
            Ok(Stats::new(
                r["command"].as_str().unwrap_or_default().to_owned(),
                times,
            ))
        })
        .collect()
}

/// Spawn `program args` with standard input from `stdin(i)` and wait, `runs.warmup +
/// runs.runs` times, one at a time; each run's time from spawn to reaped, and the largest
/// peak RSS (KiB) any measured run had. `stdin(i)` is called before run i's clock starts.
pub fn spawn_loop(
    label: String,
    program: &Path,
    args: &[&str],
    runs: Runs,
    mut stdin: impl FnMut(usize) -> anyhow::Result<std::fs::File>,
) -> anyhow::Result<(Stats, u64)> {
    let mut times = Vec::with_capacity(runs.runs);
    let mut peak_rss_kib = 0;
    for i in 0..runs.warmup + runs.runs {
        let input = stdin(i)?;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .stdin(input)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let (status, max_rss) = wait_with_rusage(child)?;
        let elapsed = started.elapsed();
        if status != 0 {
            bail!("{} exited with {status}", program.display());
        }
        if i >= runs.warmup {
            times.push(elapsed.as_secs_f64() * 1000.0);
            peak_rss_kib = peak_rss_kib.max(max_rss);
        }
    }
    Ok((Stats::new(label, times), peak_rss_kib))
}

/// Reap `child` with wait4: its exit code (or 128 + signal) and its peak RSS in KiB.
fn wait_with_rusage(child: std::process::Child) -> anyhow::Result<(i32, u64)> {
    use nix::libc;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills in; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child (std reaps only in wait/try_wait, which are
    // never called on it), and both pointers are to live locals.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        return Err(std::io::Error::last_os_error()).context("wait4 failed");
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // Linux reports ru_maxrss in KiB.
    Ok((code, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}
