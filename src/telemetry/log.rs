//! Log output: human text, journald-style under systemd, or JSON lines.
//!
//! Invariant: a value someone outside the relay supplied (an endpoint's
//! name, an event type, a request path, a URL, a receiver's error) is
//! logged through [`Escaped`], so it can neither start a log line of its
//! own nor send escape sequences to the terminal or journal that shows it.

use std::fmt::{self, Write as _};

use serde::Deserialize;
use tracing::field::{display, DisplayValue};

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

/// Displays a value with its control characters escaped as Rust writes
/// them (`\n`, `\t`, `\u{1b}`), and the Unicode marks that reorder text
/// on screen (bidirectional overrides and isolates) too. Everything else,
/// including non-ASCII text, is shown as it is.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An optional value as a log field: absent when `None`, escaped otherwise.
pub fn escaped<T: fmt::Display>(value: Option<T>) -> Option<DisplayValue<Escaped<T>>> {
    value.map(|v| display(Escaped(v)))
}

/// Whether `c` is written escaped.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Passes text through to a formatter, escaping what [`hidden`] names.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(hidden) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        let shown = Escaped("red\u{1b}[31m\nFAKE line\r\t\u{7}\u{9b}\u{202e}").to_string();
        assert_eq!(
            shown,
            "red\\u{1b}[31m\\nFAKE line\\r\\t\\u{7}\\u{9b}\\u{202e}"
        );
        assert!(!shown.chars().any(hidden));
    }

    #[test]
    fn plain_text_is_unchanged() {
        for s in [
            "course_completion.completed",
            "Nouvelle vente → CRM",
            "a\\nb",
            "",
        ] {
            assert_eq!(Escaped(s).to_string(), s);
        }
        assert_eq!(Escaped(404).to_string(), "404");
    }
}
