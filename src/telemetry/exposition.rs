//! The two text formats `/metrics` answers in, and which one a scraper asked
//! for.
//!
//! prometheus-client encodes OpenMetrics 1.0.0 only. Prometheus' own text
//! format 0.0.4 (what a scraper gets unless its `Accept` header prefers
//! OpenMetrics) differs from it in a few lines, so [`to_prometheus_text`]
//! rewrites the encoder's output line by line instead of keeping a second
//! encoder. Invariant: every sample line passes through unchanged, except
//! a counter's `_created` sample, which 0.0.4 does not have.

use std::str::FromStr;

/// A text format of the metrics exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`, Prometheus' text format.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality at least that of any
    /// range that takes plain text; Prometheus text otherwise (also with no
    /// header, or one that does not parse).
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        // A media range holds no comma outside a quoted parameter, which no
        // scraper sends; a range that fails to parse is ignored.
        for range in accept.split(',') {
            let Ok(m) = mime::Mime::from_str(range.trim()) else {
                continue;
            };
            let q = m
                .get_param("q")
                .and_then(|q| q.as_str().parse::<f32>().ok())
                .unwrap_or(1.0);
            match (m.type_().as_str(), m.subtype().as_str()) {
                ("application", "openmetrics-text") => openmetrics = openmetrics.max(q),
                ("text", "plain") | ("text", "*") | ("*", "*") => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Prometheus text format 0.0.4 from prometheus-client's OpenMetrics text.
///
/// What differs, and so what changes:
/// - a counter's `# HELP` and `# TYPE` name its samples' full name, with
///   `_total` (OpenMetrics names the family without it);
/// - an info metric is a gauge named with its `_info` suffix;
/// - there is no `# UNIT` line, no `_created` sample and no `# EOF`.
///
/// hookrelay records no exemplars, so sample lines need no change.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line waits for the TYPE line that follows it, which tells
    // the suffix both need.
    let mut help: Option<(&str, &str)> = None;
    // The counter family being written, to drop its `_created` sample.
    let mut counter: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            counter = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                other => ("", other),
            };
            match help.take() {
                Some((help_name, text)) if help_name == name => {
                    flush_help(&mut out, Some((help_name, text)), suffix)
                }
                other => flush_help(&mut out, other, ""),
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            counter = (kind == "counter").then_some(name);
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, help.take(), "");
            if let Some(name) = counter {
                let created = line
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with("_created"));
                if created {
                    continue;
                }
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapers_get_what_they_prefer() {
        // What Prometheus 2.x sends when it may use OpenMetrics.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        for accept in [
            None,
            Some("text/plain;version=0.0.4"),
            Some("*/*"),
            Some("text/plain, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
            Some("application/json"),
            Some(";;;, not a media type"),
        ] {
            assert_eq!(
                Format::from_accept(accept),
                Format::Prometheus,
                "{accept:?}"
            );
        }
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let openmetrics = "\
# HELP a_events Events.
# TYPE a_events counter
a_events_total{route=\"r\"} 3
a_events_created{route=\"r\"} 1700000000.0
# HELP a_wait_seconds Wait.
# TYPE a_wait_seconds histogram
# UNIT a_wait_seconds seconds
a_wait_seconds_sum 0.5
a_wait_seconds_count 1
a_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP a_build Build.
# TYPE a_build info
a_build_info{version=\"1.2.3\"} 1
# HELP a_depth Depth.
# TYPE a_depth gauge
a_depth{state=\"pending\"} 0
# EOF
";
        let expected = "\
# HELP a_events_total Events.
# TYPE a_events_total counter
a_events_total{route=\"r\"} 3
# HELP a_wait_seconds Wait.
# TYPE a_wait_seconds histogram
a_wait_seconds_sum 0.5
a_wait_seconds_count 1
a_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP a_build_info Build.
# TYPE a_build_info gauge
a_build_info{version=\"1.2.3\"} 1
# HELP a_depth Depth.
# TYPE a_depth gauge
a_depth{state=\"pending\"} 0
";
        assert_eq!(to_prometheus_text(openmetrics), expected);
    }

    #[test]
    fn a_label_value_that_looks_like_a_comment_is_a_sample() {
        let openmetrics = "# HELP a_x X.\n# TYPE a_x counter\na_x_total{r=\"# EOF\"} 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP a_x_total X.\n# TYPE a_x_total counter\na_x_total{r=\"# EOF\"} 1\n"
        );
    }
}
