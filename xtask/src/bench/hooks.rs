//! Hook round trip: `secret-guard` as a Claude Code PreToolUse hook, side by side with the
//! hooks users compare it to, each run the way Claude Code runs a hook command
//! (`sh -c '<command>'` with the event on standard input).

use std::path::Path;
use std::process::Command;

use super::measure::{self, Runs};
use super::report::{Report, Target};

/// Target median hook round trip (issue: hook invocations).
const TARGET_MS: f64 = 5.0;

pub fn measure(
    report: &mut Report,
    root: &Path,
    spawner: &Path,
    home: &Path,
    out: &Path,
    runs: Runs,
) -> anyhow::Result<()> {
    crate::install_agent(root, home, "secret-guard")?;
    let payload = out.join("pre-tool-use.json");
    let event = serde_json::json!({
        "session_id": "bench", "transcript_path": "/tmp/t.jsonl", "cwd": "/tmp",
        "hook_event_name": "PreToolUse", "tool_name": "Write",
        "tool_input": {"file_path": "/tmp/settings.py", "content": "DEBUG = False\nALLOWED_HOSTS = ['localhost']\nTIME_ZONE = 'UTC'\n"},
    });
    std::fs::write(&payload, event.to_string())?;
    let hook = format!(
        "{} --home {} hook secret-guard --protocol claude-code",
        spawner.display(),
        home.display()
    );
    // Warm the compiled-component cache.
    crate::run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{hook} < {}", payload.display())),
    )?;
    let mut commands = vec![format!("sh -c 'true < {}'", payload.display())];
    // The system interpreter, as a hook would find it; a version manager's shim (pyenv)
    // would add its own start-up to every call.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "pass"])
                .status()
                .is_ok_and(|s| s.success())
        });
    if let Some(python) = python {
        commands.push(format!("sh -c '{python} -c pass < {}'", payload.display()));
    }
    commands.push(format!("sh -c '{hook} < {}'", payload.display()));
    let stats = measure::hyperfine(&out.join("hooks.json"), runs, &commands)?;
    report.heading(
        "Hook round trip: `spawner hook secret-guard` as a Claude Code hook",
        &format!(
            "Each command runs as Claude Code runs a hook command, `sh -c` with a {}-byte \
             `PreToolUse` event (a Write of a small settings file) on standard input; the \
             shell is part of every row.",
            event.to_string().len()
        ),
    );
    report.table(
        "hooks",
        &stats,
        &format!("hyperfine `{}`", runs.hyperfine_options()),
    );
    if python.is_none() {
        report.not_measured("`python3 -c pass` as a hook", "no system python3 here");
    }
    let hook_median = stats.last().map_or(f64::NAN, |s| s.median());
    report.check(
        "hook round trip median",
        hook_median,
        "ms",
        Target::Below(TARGET_MS),
    );
    if let Some(hook) = stats.last() {
        super::lean::hook(report, hook);
    }
    Ok(())
}
