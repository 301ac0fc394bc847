//! Log lines on standard error: human-readable or JSON, at the level the request asks for.
//!
//! Installing the tracing subscriber costs about 0.1 ms, a noticeable share of a request
//! that logs nothing; so [`init`] only records the settings, and [`enabled`] installs the
//! subscriber the first time a line at an enabled level is about to be written. Call sites
//! read `if logging::enabled(level) { tracing::...!(...) }`.

use std::sync::OnceLock;

use agent_contract::LogFormat;
use tracing::Level;

struct Settings {
    format: LogFormat,
    max: Level,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Record the log settings: `level` is one of [`agent_contract::envelope::LOG_LEVELS`]
/// (the fronts check it); anything else falls back to `warn`.
pub fn init(format: LogFormat, level: Option<&str>) {
    let max = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("trace") => Level::TRACE,
        Some("debug") => Level::DEBUG,
        Some("info") => Level::INFO,
        Some("error") => Level::ERROR,
        _ => Level::WARN,
    };
    let _ = SETTINGS.set(Settings { format, max });
}

/// Whether a line at `level` would be written; installs the subscriber on the first yes.
pub fn enabled(level: Level) -> bool {
    let Some(settings) = SETTINGS.get() else {
        return false;
    };
    // tracing orders levels by verbosity: TRACE is the greatest, ERROR the least.
    if level > settings.max {
        return false;
    }
    INSTALLED.get_or_init(|| {
        let builder = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(settings.max)
            .with_target(false);
        let _ = match settings.format {
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
            LogFormat::Human => builder.without_time().try_init(),
        };
    });
    true
}
