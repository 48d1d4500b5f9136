//! Log output: human text, journald-style under systemd, or JSON lines.

use serde::Deserialize;

/// `[log]`: what the process prints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, as in `RUST_LOG` (which wins when set).
    pub level: String,
    pub format: LogFormat,
}

/// `log.format`: `"text"` (journald-style under systemd) or `"json"` lines.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Sets up log output: human text on a terminal or in files; under systemd
/// (JOURNAL_STREAM set) no timestamps and journald priority prefixes; JSON
/// lines with `log.format = "json"`. `RUST_LOG` overrides `log.level`.
pub fn init_logging(config: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .map_err(|e| format!("log.level: not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let result = match config.format {
        // The event's own `target` field (a delivery target) wins over the module path.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .try_init(),
        LogFormat::Text if journald => builder
            .with_ansi(false)
            .event_format(journal::Format)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Lines for journald: `<priority>target: message fields`, no timestamp
/// (the journal adds its own).
mod journal {
    use std::fmt;

    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    pub struct Format;

    impl<S, N> FormatEvent<S, N> for Format
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let meta = event.metadata();
            // sd-daemon(3) priorities: 3 err, 4 warning, 6 info, 7 debug.
            let priority = match *meta.level() {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                Level::DEBUG | Level::TRACE => 7,
            };
            write!(w, "<{priority}>{}: ", meta.target())?;
            ctx.format_fields(w.by_ref(), event)?;
            writeln!(w)
        }
    }
}
