//! The one place logging is set up: pretty for people, JSON for machines.
//!
//! With `log.format = "json"` every line the process writes to stderr is a JSON object,
//! whatever the role: the roles log through `tracing`, panics are logged as `error`
//! events by a panic hook, and the error that stops the process is logged too
//! ([`report_fatal`]). Reads `log.format` and `log.filter`.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// The format of the installed subscriber, once one is installed.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber; `RUST_LOG` overrides `log.filter`. Idempotent, so
/// tests may call it more than once.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if installed.is_ok()
        && FORMAT.set(settings.format).is_ok()
        && settings.format == LogFormat::Json
    {
        // The default hook prints plain text, which a JSON log pipeline cannot parse.
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(panic = %message, location, "panic");
        }));
    }
}

/// Reports the error that stops the process: an `error` event when the logs are JSON,
/// so that log pipelines see it, else one line on stderr (also before any subscriber
/// exists, e.g. for a configuration error).
pub fn report_fatal(error: &anyhow::Error) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        tracing::error!(error = %format!("{error:#}"), "stopped");
    } else {
        eprintln!("error: {error:#}");
    }
}
