//! Log lines on standard error: human-readable or JSON, at the level the request asks for.

use agent_contract::LogFormat;
use tracing::Level;

/// Install the process-wide subscriber. Unknown levels fall back to `warn`.
pub fn init(format: LogFormat, level: Option<&str>) {
    let level = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("trace") => Level::TRACE,
        Some("debug") => Level::DEBUG,
        Some("info") => Level::INFO,
        Some("error") => Level::ERROR,
        _ => Level::WARN,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.without_time().try_init(),
    };
}
