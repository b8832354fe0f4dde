//! Logging setup: a `tracing` subscriber writing text or JSON to stderr.
//!
//! The filter comes from `GRIPD_LOG` when set (any `EnvFilter` directive), else from the
//! configured level. Tests install nothing unless `TEST_LOG` is set (see the test harness).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(level: &str, format: LogFormat, env_filter: Option<&str>) {
    let filter = env_filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
