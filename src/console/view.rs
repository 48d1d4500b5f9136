//! The console's templates (in the binary) and the filters they use.
//! Every template is HTML-escaped by minijinja: a value from a receiver,
//! the LMS or a token holder can only ever be text in a page.

use std::time::{Duration, UNIX_EPOCH};

use minijinja::{AutoEscape, Environment, Value as Tv};

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("signin.html", include_str!("templates/signin.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("endpoints.html", include_str!("templates/endpoints.html")),
    ("endpoint.html", include_str!("templates/endpoint.html")),
    (
        "endpoint_form.html",
        include_str!("templates/endpoint_form.html"),
    ),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event.html", include_str!("templates/event.html")),
    ("dead.html", include_str!("templates/dead.html")),
];

/// The compiled templates.
pub struct Views {
    env: Environment<'static>,
}

/// A serializable value as a template value.
pub fn tv<T: serde::Serialize + ?Sized>(value: &T) -> Tv {
    Tv::from(minijinja::value::Serde(value))
}

/// A context of a few named values (pages outside the frame).
pub fn plain_context(values: &[(&str, Tv)]) -> Tv {
    let map: std::collections::BTreeMap<String, Tv> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Tv::from(map)
}

impl Views {
    pub fn new() -> Result<Views, String> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| format!("console template {name}: {e}"))?;
        }
        env.add_filter("time", time);
        env.add_filter("num", num);
        env.add_filter("pct", pct);
        env.add_filter("bytes", bytes);
        env.add_filter("ms", millis);
        env.add_filter("seg", |s: String| crate::console::pages::segment(&s));
        Ok(Views { env })
    }

    /// Renders a template; a failure is logged and shown as a short page.
    pub fn render(&self, name: &str, cx: Tv) -> String {
        match self.env.get_template(name).and_then(|t| t.render(cx)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(template = name, error = %e, "console page failed to render");
                "<!doctype html><title>hookrelay</title><p>This page could not be shown; the log says why.</p>"
                    .to_string()
            }
        }
    }
}

/// `ms | time`: a `<time>` element in UTC, which the console's script shows
/// in the browser's time zone.
fn time(v: Tv) -> Tv {
    let Some(ms) = v.as_i64().and_then(|m| u64::try_from(m).ok()) else {
        return Tv::from("—");
    };
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let iso = humantime::format_rfc3339_seconds(at).to_string();
    let shown = iso.replace('T', " ").replace('Z', " UTC");
    // Both strings are digits, dashes, colons and letters we wrote.
    Tv::from_safe_string(format!("<time datetime=\"{iso}\">{shown}</time>"))
}

/// `n | num`: thousands grouped with thin spaces.
fn num(v: Tv) -> String {
    let Some(n) = v.as_i64() else {
        return "—".into();
    };
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// `rate | pct`: a 0..1 rate as a percentage.
fn pct(v: Tv) -> String {
    match f64::try_from(v) {
        Ok(r) if r.is_finite() => {
            let p = r * 100.0;
            if p == 100.0 || p == 0.0 {
                format!("{p:.0} %")
            } else {
                format!("{p:.1} %")
            }
        }
        _ => "—".into(),
    }
}

/// `n | bytes`: KiB, MiB, GiB.
fn bytes(v: Tv) -> String {
    let Some(n) = v.as_i64() else {
        return "—".into();
    };
    let n = n.max(0) as f64;
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = n;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < units.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{size:.1} {}", units[unit])
    }
}

/// `ms | ms`: a duration in milliseconds, read easily.
fn millis(v: Tv) -> String {
    let Some(ms) = v.as_i64() else {
        return "—".into();
    };
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        Views::new().unwrap();
    }

    #[test]
    fn filters() {
        assert_eq!(num(Tv::from(1234567)), "1\u{202f}234\u{202f}567");
        assert_eq!(num(Tv::from(12)), "12");
        assert_eq!(pct(Tv::from(0.5)), "50.0 %");
        assert_eq!(pct(Tv::from(1.0)), "100 %");
        assert_eq!(pct(Tv::from(())), "—");
        assert_eq!(bytes(Tv::from(2048)), "2.0 KiB");
        assert_eq!(millis(Tv::from(1500)), "1.5 s");
        assert_eq!(
            time(Tv::from(0)).to_string(),
            "<time datetime=\"1970-01-01T00:00:00Z\">1970-01-01 00:00:00 UTC</time>"
        );
    }
}
