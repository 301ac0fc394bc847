//! `spawner runs`: recent run records from the memory store.

use std::io::Write;

use agent_contract::{Home, Outcome};
use memory_store::{RunFilter, Store};

use crate::cli::RunsArgs;

/// List recent runs, newest first.
pub fn execute(home: &Home, args: RunsArgs) -> anyhow::Result<Outcome> {
    let path = home.store_path();
    let mut out = std::io::stdout().lock();
    if !path.exists() {
        if !args.json {
            writeln!(out, "no runs yet ({} does not exist)", path.display())?;
        }
        return Ok(Outcome::Ok);
    }
    let store = Store::open(&path)?;
    let runs = store.runs(&RunFilter {
        agent: args.agent,
        limit: args.limit,
    })?;
    if args.json {
        for run in &runs {
            serde_json::to_writer(&mut out, run)?;
            out.write_all(b"\n")?;
        }
        return Ok(Outcome::Ok);
    }
    writeln!(
        out,
        "{:28}  {:16}  {:14}  {:>4}  {:19}  {:>9}  ERROR",
        "RUN", "AGENT", "STATUS", "EXIT", "STARTED (UTC)", "TOTAL"
    )?;
    for r in &runs {
        writeln!(
            out,
            "{:28}  {:16}  {:14}  {:>4}  {:19}  {:>7.2}ms  {}",
            r.run_id,
            r.agent,
            r.status.as_str(),
            r.status.exit_code(),
            utc(r.started_at_ms),
            r.timings.total_us as f64 / 1000.0,
            r.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        )?;
    }
    Ok(Outcome::Ok)
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
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_412_096_000), "2026-11-23 05:34:56");
    }
}
