//! The broker's log: text for terminals and files (colour only on a
//! terminal, never with `NO_COLOR` set), or one JSON object per line for log
//! pipelines (`log_format = "json"`); a filter that `PUT /v1/log-level`
//! changes at run time; and client errors logged at a bounded rate, so a
//! misbehaving client cannot flood the log.

use std::cell::Cell;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber: `SPATE_LOG` (a tracing filter) if set,
/// else `default_filter`. Logs go to stderr.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env("SPATE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer.with_ansi(use_colour())).init(),
        LogFormat::Json => registry.with(layer.json().with_current_span(false).with_span_list(false)).init(),
    }
}

/// Colour only for a terminal, and never when `NO_COLOR` is set (no-color.org).
fn use_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Replaces the log filter (tracing's `EnvFilter` syntax: `debug`,
/// `info,spate::storage=debug`). Err: why the directives were refused.
pub fn set_filter(directives: &str) -> Result<String, String> {
    let filter = EnvFilter::try_new(directives.trim()).map_err(|e| format!("invalid log filter: {e}"))?;
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(current_filter())
}

pub fn current_filter() -> String {
    FILTER.get().and_then(|h| h.with_current(|f| f.to_string()).ok()).unwrap_or_default()
}

/// Client-error lines each shard logs per window; the rest are counted and
/// reported when the next window opens.
const CLIENT_ERRORS_PER_WINDOW: u32 = 20;
const CLIENT_ERROR_WINDOW: Duration = Duration::from_secs(10);

thread_local! {
    static CLIENT_ERRORS: Cell<(Option<Instant>, u32, u64)> = const { Cell::new((None, 0, 0)) };
}

/// Logs a client's error at WARN, at most [`CLIENT_ERRORS_PER_WINDOW`] per
/// shard every 10 s; the number left out is logged with the next one.
pub fn client_error(peer: &str, message: &str) {
    let (window, logged, suppressed) = CLIENT_ERRORS.get();
    let now = Instant::now();
    let (logged, suppressed) = match window {
        Some(start) if now.duration_since(start) < CLIENT_ERROR_WINDOW => (logged, suppressed),
        _ => {
            if suppressed > 0 {
                warn!(suppressed, "client errors not logged in the last window (at most 20 per shard every 10 s)");
            }
            CLIENT_ERRORS.set((Some(now), 0, 0));
            (0, 0)
        }
    };
    let start = CLIENT_ERRORS.get().0;
    if logged < CLIENT_ERRORS_PER_WINDOW {
        warn!(peer, "{message}");
        CLIENT_ERRORS.set((start, logged + 1, suppressed));
    } else {
        CLIENT_ERRORS.set((start, logged, suppressed + 1));
    }
}
