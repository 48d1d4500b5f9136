//! Charts for the console, drawn on the server as inline SVG.
//!
//! Pure functions: a [`Chart`] in, a `<figure class="chart">` out, no I/O. The
//! console's Content-Security-Policy forbids inline styles and scripts, so the
//! output carries no `style=` attribute, no `<style>` and no `<script>`:
//! shapes paint with `currentColor` (a presentation attribute) and the
//! stylesheet gives each class its `color`. Without a stylesheet the chart
//! still reads, in the page's text colour.
//!
//! Invariants: every text a caller gives (title, unit, axis labels, series
//! labels) is XML-escaped; negative, NaN and infinite values count as 0; no
//! attribute ever holds NaN or an infinity, and numbers have at most two
//! decimals.
//!
//! # CSS classes the output uses
//!
//! | class | element | what it is |
//! | --- | --- | --- |
//! | `chart` | `figure` | the whole chart; also `chart-bars` or `chart-lines` |
//! | `chart-title` | `span` in `figcaption` | the visible title |
//! | `legend` | `ul` in `figcaption` | the legend; one `legend-item` `li` per series |
//! | `swatch` | `span` in a `legend-item` | the series' colour sample: a ■ (bars) or ━ (lines) glyph in the tone's `color` |
//! | `tone-good`, `tone-bad`, `tone-neutral`, `tone-warn` | bars, lines, points, swatches | set `color`: shapes fill or stroke with `currentColor`, swatches are text |
//! | `plot` | `g` | everything inside the axes |
//! | `grid` | `g` of `line`s | the gridlines (half and top of the y range); stroke `currentColor` |
//! | `baseline` | `line` | the x axis at 0; stroke `currentColor` |
//! | `axis` | `g` of `text`s | axis labels; fill `currentColor` |
//! | `y-max`, `x-start`, `x-end` | `text` in `axis` | the y range's top (with the unit), the two x labels |
//! | `empty` | `text` | "No data", when there is nothing to draw |
//! | `bucket` | `g` | one bucket: a `<title>` (the native tooltip), a `hit` rect, its shapes |
//! | `hit` | `rect` | the bucket's hover area: `fill="none"` `pointer-events="all"`, invisible |
//! | `bar` | `rect` | one series' segment of a stacked bar |
//! | `line` | `polyline` | one series of a line chart (`fill="none"`, `stroke-width="2"`) |
//! | `point` | `circle` | a series with a single value, which a polyline cannot show |
//!
//! The `svg` has a `viewBox` and `preserveAspectRatio="xMidYMid meet"`;
//! `.chart svg {width: 100%; height: auto}` scales it to its container.

use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hash, Hasher};

/// How a series is coloured (by a CSS class the console's stylesheet defines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Neutral,
    Warn,
}

impl Tone {
    /// The CSS class that colours this tone.
    pub fn class(self) -> &'static str {
        match self {
            Tone::Good => "tone-good",
            Tone::Bad => "tone-bad",
            Tone::Neutral => "tone-neutral",
            Tone::Warn => "tone-warn",
        }
    }
}

/// One series: `values[i]` is bucket `i`, counted from the chart's `start`.
/// A series shorter than the longest one has no data for the later buckets:
/// bars count them as 0, lines stop there.
pub struct Series<'a> {
    pub label: &'a str,
    pub tone: Tone,
    pub values: &'a [f64],
}

/// What to draw. Every text is the caller's and is escaped on output.
pub struct Chart<'a> {
    /// E.g. "Deliveries per minute, last hour".
    pub title: &'a str,
    /// E.g. "deliveries", "ms", "bytes" ("bytes" is shown as B/KiB/MiB/GiB).
    pub unit: &'a str,
    /// The x-axis label at the left, e.g. "60 min ago".
    pub start: &'a str,
    /// The x-axis label at the right, e.g. "now".
    pub end: &'a str,
    pub series: Vec<Series<'a>>,
}

/// Stacked bars, one per bucket (counts).
pub fn bars(chart: &Chart) -> String {
    let values = cleaned(chart);
    let buckets = bucket_count(&values);
    let totals: Vec<f64> = (0..buckets)
        .map(|i| values.iter().map(|s| at(s, i)).sum())
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max);
    let top = axis_top(max, chart.unit);

    let mut desc = summary_head(chart, buckets);
    for (series, vals) in chart.series.iter().zip(&values) {
        let total: f64 = vals.iter().sum();
        let peak = vals.iter().copied().fold(0.0, f64::max);
        desc.push_str(&format!(
            " {}: total {}, max {}.",
            series.label,
            exact(total, chart.unit),
            exact(peak, chart.unit)
        ));
    }
    if buckets > 0 {
        desc.push_str(&format!(" Highest bucket: {}.", exact(max, chart.unit)));
    }

    let mut out = Frame::open(chart, Kind::Bars, top, &desc, buckets == 0);
    let plot = Plot::new(buckets);
    for (i, total) in totals.iter().enumerate() {
        let tip = if chart.series.len() == 1 {
            format!("{}: {}", chart.series[0].label, exact(*total, chart.unit))
        } else {
            let parts: Vec<String> = chart
                .series
                .iter()
                .zip(&values)
                .map(|(s, vals)| format!("{} {}", s.label, bare(at(vals, i), chart.unit)))
                .collect();
            format!("{}: {}", exact(*total, chart.unit), parts.join(", "))
        };
        let slot = plot.slot();
        let x = PLOT_LEFT + slot * i as f64;
        out.open_bucket(&tip, x, slot);

        // Segment edges are rounded, not heights, so stacked segments tile
        // exactly and the top edge never passes the plot's top.
        let bar_x = x + slot * BAR_GAP / 2.0;
        let bar_w = slot * (1.0 - BAR_GAP);
        let mut below = 0.0;
        for (series, vals) in chart.series.iter().zip(&values) {
            let v = at(vals, i);
            if v == 0.0 {
                continue;
            }
            let y_low = round2(plot.y(below, top));
            let y_high = round2(plot.y(below + v, top));
            below += v;
            out.put(format_args!(
                r#"<rect class="bar {}" fill="currentColor" x="{}" y="{}" width="{}" height="{}"/>"#,
                series.tone.class(),
                num(bar_x),
                num(y_high),
                num(bar_w),
                num(y_low - y_high),
            ));
        }
        out.put(format_args!("</g>"));
    }
    out.close(chart, Kind::Bars)
}

/// One polyline per series (gauges, durations).
pub fn lines(chart: &Chart) -> String {
    let values = cleaned(chart);
    let buckets = bucket_count(&values);
    let max = values.iter().flatten().copied().fold(0.0, f64::max);
    let top = axis_top(max, chart.unit);

    let mut desc = summary_head(chart, buckets);
    for (series, vals) in chart.series.iter().zip(&values) {
        match vals.last() {
            Some(last) => {
                let peak = vals.iter().copied().fold(0.0, f64::max);
                desc.push_str(&format!(
                    " {}: max {}, last {}.",
                    series.label,
                    exact(peak, chart.unit),
                    exact(*last, chart.unit)
                ));
            }
            None => desc.push_str(&format!(" {}: no data.", series.label)),
        }
    }

    let mut out = Frame::open(chart, Kind::Lines, top, &desc, buckets == 0);
    let plot = Plot::new(buckets);
    for (series, vals) in chart.series.iter().zip(&values) {
        match vals.as_slice() {
            [] => {}
            [only] => out.put(format_args!(
                r#"<circle class="point {}" fill="currentColor" cx="{}" cy="{}" r="3"/>"#,
                series.tone.class(),
                num(plot.point_x(0)),
                num(plot.y(*only, top)),
            )),
            _ => {
                let points: Vec<String> = vals
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{},{}", num(plot.point_x(i)), num(plot.y(*v, top))))
                    .collect();
                out.put(format_args!(
                    r#"<polyline class="line {}" fill="none" stroke="currentColor" stroke-width="2" stroke-linejoin="round" points="{}"/>"#,
                    series.tone.class(),
                    points.join(" "),
                ));
            }
        }
    }
    // Hover areas go after the lines so they are on top and catch the pointer
    // anywhere in a bucket's column.
    for i in 0..buckets {
        let parts: Vec<String> = chart
            .series
            .iter()
            .zip(&values)
            .filter(|(_, vals)| i < vals.len())
            .map(|(s, vals)| format!("{} {}", s.label, exact(vals[i], chart.unit)))
            .collect();
        let (x, width) = plot.point_column(i);
        out.open_bucket(&parts.join(", "), x, width);
        out.put(format_args!("</g>"));
    }
    out.close(chart, Kind::Lines)
}

// === layout ===

/// The viewBox: 720 user units wide, so text is 12px at a 720px container.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const FONT_SIZE: u32 = 12;
const PLOT_LEFT: f64 = 4.0;
const PLOT_RIGHT: f64 = WIDTH - 4.0;
/// Room above the plot for the y-axis label.
const PLOT_TOP: f64 = 20.0;
/// Room below the plot for the x-axis labels.
const PLOT_BOTTOM: f64 = HEIGHT - 20.0;
const PLOT_WIDTH: f64 = PLOT_RIGHT - PLOT_LEFT;
const PLOT_HEIGHT: f64 = PLOT_BOTTOM - PLOT_TOP;
/// The share of a bucket's slot left empty between two bars.
const BAR_GAP: f64 = 0.2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bars,
    Lines,
}

/// The plot area's geometry for a number of buckets.
struct Plot {
    buckets: usize,
}

impl Plot {
    fn new(buckets: usize) -> Plot {
        Plot { buckets }
    }

    /// A bar's slot width.
    fn slot(&self) -> f64 {
        PLOT_WIDTH / self.buckets.max(1) as f64
    }

    /// The y coordinate of `value` on an axis from 0 to `top` (> 0).
    fn y(&self, value: f64, top: f64) -> f64 {
        PLOT_BOTTOM - (value / top).clamp(0.0, 1.0) * PLOT_HEIGHT
    }

    /// A line point's x: the first bucket at the left edge, the last at the
    /// right, so the points line up with the x labels.
    fn point_x(&self, i: usize) -> f64 {
        match self.buckets {
            0 | 1 => PLOT_LEFT + PLOT_WIDTH / 2.0,
            n => PLOT_LEFT + PLOT_WIDTH * i as f64 / (n - 1) as f64,
        }
    }

    /// The hover column around a line point: halfway to each neighbour.
    fn point_column(&self, i: usize) -> (f64, f64) {
        if self.buckets <= 1 {
            return (PLOT_LEFT, PLOT_WIDTH);
        }
        let half = PLOT_WIDTH / (self.buckets - 1) as f64 / 2.0;
        let left = (self.point_x(i) - half).max(PLOT_LEFT);
        let right = (self.point_x(i) + half).min(PLOT_RIGHT);
        (left, right - left)
    }
}

/// The output under construction: the figure, the svg, the axes.
struct Frame(String);

impl Frame {
    fn open(chart: &Chart, kind: Kind, top: f64, desc: &str, empty: bool) -> Frame {
        let id = chart_id(chart, kind);
        let kind_class = match kind {
            Kind::Bars => "chart-bars",
            Kind::Lines => "chart-lines",
        };
        let mut out = Frame(String::with_capacity(4096));
        out.put(format_args!(
            r#"<figure class="chart {kind_class}"><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" preserveAspectRatio="xMidYMid meet" font-size="{FONT_SIZE}" role="img" aria-labelledby="{id}-title" aria-describedby="{id}-desc"><title id="{id}-title">{title}</title><desc id="{id}-desc">{desc}</desc>"#,
            w = num(WIDTH),
            h = num(HEIGHT),
            title = escape(chart.title),
            desc = escape(desc),
        ));
        let mid = PLOT_TOP + PLOT_HEIGHT / 2.0;
        out.put(format_args!(
            r#"<g class="grid" stroke="currentColor" stroke-width="0.5"><line x1="{l}" y1="{t}" x2="{r}" y2="{t}"/><line x1="{l}" y1="{m}" x2="{r}" y2="{m}"/></g><line class="baseline" stroke="currentColor" x1="{l}" y1="{b}" x2="{r}" y2="{b}"/>"#,
            l = num(PLOT_LEFT),
            r = num(PLOT_RIGHT),
            t = num(PLOT_TOP),
            m = num(mid),
            b = num(PLOT_BOTTOM),
        ));
        let label_y = HEIGHT - 5.0;
        out.put(format_args!(
            r#"<g class="axis" fill="currentColor"><text class="y-max" x="{l}" y="{ty}">{max}</text><text class="x-start" x="{l}" y="{by}">{start}</text><text class="x-end" x="{r}" y="{by}" text-anchor="end">{end}</text>"#,
            l = num(PLOT_LEFT),
            r = num(PLOT_RIGHT),
            ty = num(PLOT_TOP - 6.0),
            by = num(label_y),
            max = escape(&amount(top, chart.unit)),
            start = escape(chart.start),
            end = escape(chart.end),
        ));
        if empty {
            out.put(format_args!(
                r#"<text class="empty" x="{}" y="{}" text-anchor="middle">No data</text>"#,
                num(PLOT_LEFT + PLOT_WIDTH / 2.0),
                num(mid),
            ));
        }
        out.put(format_args!(r#"</g><g class="plot">"#));
        out
    }

    /// Opens a bucket's group: its tooltip and its hover area. The caller
    /// adds the shapes and closes the group.
    fn open_bucket(&mut self, tip: &str, x: f64, width: f64) {
        self.put(format_args!(
            r#"<g class="bucket"><title>{}</title><rect class="hit" fill="none" pointer-events="all" x="{}" y="{}" width="{}" height="{}"/>"#,
            escape(tip),
            num(x),
            num(PLOT_TOP),
            num(width),
            num(PLOT_HEIGHT),
        ));
    }

    fn close(mut self, chart: &Chart, kind: Kind) -> String {
        self.put(format_args!(
            r#"</g></svg><figcaption><span class="chart-title">{}</span>"#,
            escape(chart.title)
        ));
        if !chart.series.is_empty() {
            self.put(format_args!(r#"<ul class="legend">"#));
            for series in &chart.series {
                // A glyph, not a nested svg: `.chart svg` (width 100%) would
                // blow an svg swatch up to the figure's width. A character
                // reference keeps the output ASCII, whatever the page's charset.
                let glyph = match kind {
                    Kind::Bars => "&#x25A0;",  // ■
                    Kind::Lines => "&#x2501;", // ━
                };
                self.put(format_args!(
                    r#"<li class="legend-item"><span class="swatch {}" aria-hidden="true">{glyph}</span> {}</li>"#,
                    series.tone.class(),
                    escape(series.label),
                ));
            }
            self.put(format_args!("</ul>"));
        }
        self.put(format_args!("</figcaption></figure>"));
        self.0
    }

    fn put(&mut self, args: fmt::Arguments) {
        // Writing into a String cannot fail.
        let _ = self.0.write_fmt(args);
    }
}

/// An id for the chart's `<title>` and `<desc>`, unique among the charts of
/// a page as long as their content differs, and stable across renders.
fn chart_id(chart: &Chart, kind: Kind) -> String {
    let mut h = DefaultHasher::new();
    (kind == Kind::Bars).hash(&mut h);
    (chart.title, chart.unit, chart.start, chart.end).hash(&mut h);
    for s in &chart.series {
        s.label.hash(&mut h);
        s.tone.class().hash(&mut h);
        for v in s.values {
            v.to_bits().hash(&mut h);
        }
    }
    format!("chart-{:016x}", h.finish())
}

// === values ===

/// Each series' values with the unusable ones (negative, NaN, infinite) as 0.
fn cleaned(chart: &Chart) -> Vec<Vec<f64>> {
    chart
        .series
        .iter()
        .map(|s| s.values.iter().map(|&v| clean(v)).collect())
        .collect()
}

fn clean(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

fn bucket_count(values: &[Vec<f64>]) -> usize {
    values.iter().map(Vec::len).max().unwrap_or(0)
}

fn at(values: &[f64], i: usize) -> f64 {
    values.get(i).copied().unwrap_or(0.0)
}

fn summary_head(chart: &Chart, buckets: usize) -> String {
    if buckets == 0 {
        return "No data.".to_string();
    }
    let noun = if buckets == 1 { "bucket" } else { "buckets" };
    format!("{buckets} {noun} from {} to {}.", chart.start, chart.end)
}

/// The top of the y axis: a round number at or above `max`, never 0. For
/// bytes the round number is taken in the binary unit `max` is shown in.
fn axis_top(max: f64, unit: &str) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    if unit == BYTES {
        let mut scale = 1.0;
        while max / scale >= 1024.0 && scale < TIB {
            scale *= 1024.0;
        }
        return (nice_ceil(max / scale).min(1024.0)) * scale;
    }
    nice_ceil(max)
}

/// The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10ⁿ that is ≥ `v` (> 0).
fn nice_ceil(v: f64) -> f64 {
    const STEPS: [f64; 10] = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0];
    let magnitude = 10f64.powf(v.log10().floor());
    let fraction = v / magnitude;
    // The tolerance keeps 3.0000000001 (float noise) from jumping to 4.
    let step = STEPS
        .iter()
        .copied()
        .find(|s| *s >= fraction - 1e-9)
        .unwrap_or(10.0);
    step * magnitude
}

// === text ===

/// The unit whose amounts are shown in binary multiples.
const BYTES: &str = "bytes";
const TIB: f64 = 1024.0 * 1024.0 * 1024.0 * 1024.0;

/// A compact amount for the axis: "1.2k deliveries", "3.4 MiB".
fn amount(v: f64, unit: &str) -> String {
    if unit == BYTES {
        return bytes(v);
    }
    with_unit(compact(v), unit)
}

/// An exact amount for tooltips and the summary: "1234 deliveries",
/// "12.5 ms", "3.4 MiB".
fn exact(v: f64, unit: &str) -> String {
    if unit == BYTES {
        return bytes(v);
    }
    with_unit(num(v), unit)
}

/// Like `exact`, but without the unit (bytes keep theirs): "1234", "3.4 MiB".
fn bare(v: f64, unit: &str) -> String {
    exact(v, if unit == BYTES { BYTES } else { "" })
}

fn with_unit(number: String, unit: &str) -> String {
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

/// 950, 1.2k, 3.4M, 5G.
fn compact(v: f64) -> String {
    scaled(v, 1000.0, &["", "k", "M", "G", "T", "P"], "")
}

/// 512 B, 1.5 KiB, 3.4 MiB, 1 GiB.
fn bytes(v: f64) -> String {
    scaled(v, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"], " ")
}

/// `v` in the largest of `prefixes` (each `base` times the one before) that
/// keeps it under `base`, with one decimal.
fn scaled(v: f64, base: f64, prefixes: &[&str], sep: &str) -> String {
    let mut v = clean(v);
    let mut p = 0;
    // Compare the rounded value, so 999.96 shows as "1k", not "1000k".
    while (v * 10.0).round() / 10.0 >= base && p + 1 < prefixes.len() {
        v /= base;
        p += 1;
    }
    let digits = if p == 0 {
        num(v)
    } else {
        trim(format!("{v:.1}"))
    };
    format!("{digits}{sep}{}", prefixes[p])
}

/// A number for an attribute or a label: at most two decimals, no trailing
/// zeros, never "-0", NaN or an infinity.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_string();
    }
    trim(format!("{:.2}", round2(v)))
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn trim(s: String) -> String {
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Escapes a caller's text for XML text and attribute values, and drops the
/// characters XML 1.0 cannot hold at all (most control characters), so no
/// name can break the document.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart<'a>(series: Vec<Series<'a>>) -> Chart<'a> {
        Chart {
            title: "Deliveries per minute, last hour",
            unit: "deliveries",
            start: "60 min ago",
            end: "now",
            series,
        }
    }

    /// Parses the figure as XML (proving it well-formed) and hands it over.
    fn parse(out: &str, check: impl FnOnce(&roxmltree::Document)) {
        let doc = roxmltree::Document::parse(out)
            .unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{out}"));
        check(&doc);
    }

    fn with_class<'a, 'i>(
        doc: &'a roxmltree::Document<'i>,
        tag: &'a str,
        class: &'a str,
    ) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
        doc.descendants().filter(move |n| {
            n.tag_name().name() == tag
                && n.attribute("class")
                    .is_some_and(|c| c.split(' ').any(|c| c == class))
        })
    }

    fn attr(node: &roxmltree::Node, name: &str) -> f64 {
        let text = node.attribute(name).unwrap_or_else(|| panic!("no {name}"));
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is no number"))
    }

    fn y_max(doc: &roxmltree::Document) -> String {
        with_class(doc, "text", "y-max")
            .next()
            .and_then(|n| n.text())
            .expect("a y-max label")
            .to_string()
    }

    /// What every output must satisfy, whatever the input.
    fn assert_sane(out: &str) {
        for bad in ["NaN", "inf", "style=", "<style", "<script"] {
            assert!(!out.contains(bad), "{bad:?} in output:\n{out}");
        }
        parse(out, |doc| {
            let root = doc.root_element();
            assert_eq!(root.tag_name().name(), "figure");
            let svg = root.first_element_child().expect("an svg");
            assert_eq!(svg.tag_name().name(), "svg");
            assert_eq!(svg.attribute("role"), Some("img"));
            assert!(svg.attribute("viewBox").is_some());
            let title_id = svg.attribute("aria-labelledby").expect("aria-labelledby");
            let title = doc
                .descendants()
                .find(|n| n.attribute("id") == Some(title_id))
                .expect("the labelling element");
            assert_eq!(title.tag_name().name(), "title");
            let desc_id = svg.attribute("aria-describedby").expect("aria-describedby");
            assert!(doc
                .descendants()
                .any(|n| n.tag_name().name() == "desc" && n.attribute("id") == Some(desc_id)));
            assert!(root.children().any(|n| n.tag_name().name() == "figcaption"));
            // Numbers in attributes have at most two decimals.
            for node in doc.descendants() {
                for a in node.attributes() {
                    for number in a.value().split([' ', ',']) {
                        if let Some((_, decimals)) = number.split_once('.') {
                            if number.parse::<f64>().is_ok() {
                                assert!(decimals.len() <= 2, "{}={:?}", a.name(), a.value());
                            }
                        }
                    }
                }
            }
        });
    }

    const HOSTILE: &str = r#"<script>alert("x")</script> & 'q'"#;

    #[test]
    fn every_caller_text_is_escaped() {
        let values = [1.0, 2.0];
        let c = Chart {
            title: HOSTILE,
            unit: HOSTILE,
            start: HOSTILE,
            end: HOSTILE,
            series: vec![Series {
                label: HOSTILE,
                tone: Tone::Bad,
                values: &values,
            }],
        };
        for out in [bars(&c), lines(&c)] {
            assert_sane(&out);
            assert!(!out.contains(HOSTILE));
            assert!(!out.contains("<script"));
            assert!(
                out.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;")
            );
            parse(&out, |doc| {
                // Title (svg title + figcaption), unit (y label, desc,
                // tooltips), start and end, series label (legend, desc,
                // tooltips): each comes back as the text it was.
                let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
                let whole = texts.iter().filter(|t| **t == HOSTILE).count();
                // svg title, figcaption title, x-start, x-end.
                assert!(whole >= 4, "{whole} whole texts in {texts:?}");
                assert!(texts.iter().any(|t| t.starts_with("2 <script>")), "y label");
                let legend = with_class(doc, "li", "legend-item").next().expect("legend");
                assert!(legend
                    .children()
                    .any(|n| n.text().map(str::trim) == Some(HOSTILE)));
            });
        }
    }

    #[test]
    fn control_characters_cannot_break_the_document() {
        let c = Chart {
            title: "a\u{0}b\u{1b}c",
            ..chart(vec![])
        };
        assert_sane(&bars(&c));
        assert!(bars(&c).contains(">abc<"));
    }

    #[test]
    fn one_bar_group_per_bucket() {
        let ok = [3.0, 0.0, 5.0, 1.0, 2.0];
        let failed = [1.0, 1.0];
        let out = bars(&chart(vec![
            Series {
                label: "succeeded",
                tone: Tone::Good,
                values: &ok,
            },
            Series {
                label: "failed",
                tone: Tone::Bad,
                values: &failed,
            },
        ]));
        assert_sane(&out);
        parse(&out, |doc| {
            assert_eq!(with_class(doc, "g", "bucket").count(), 5);
            // Zero segments are not drawn: 4 succeeded, 2 failed.
            assert_eq!(with_class(doc, "rect", "tone-good").count(), 4);
            assert_eq!(with_class(doc, "rect", "bar").count(), 6);
            let tips: Vec<&str> = with_class(doc, "g", "bucket")
                .map(|g| g.children().find(|n| n.has_tag_name("title")).unwrap())
                .filter_map(|t| t.text())
                .collect();
            assert_eq!(tips[0], "4 deliveries: succeeded 3, failed 1");
            assert_eq!(tips[4], "2 deliveries: succeeded 2, failed 0");
        });
    }

    #[test]
    fn stacked_bars_add_up_within_the_plot() {
        let ok = [40.0, 10.0, 70.0];
        let failed = [7.0, 0.0, 17.0];
        let out = bars(&chart(vec![
            Series {
                label: "succeeded",
                tone: Tone::Good,
                values: &ok,
            },
            Series {
                label: "failed",
                tone: Tone::Bad,
                values: &failed,
            },
        ]));
        assert_sane(&out);
        parse(&out, |doc| {
            // The stacked max is 87, so the axis tops out at 100, not at 70.
            assert_eq!(y_max(doc), "100 deliveries");
            assert!(doc.descendants().any(|n| n.has_tag_name("desc")
                && n.text().unwrap().contains("Highest bucket: 87 deliveries")));
            for bucket in with_class(doc, "g", "bucket") {
                let rects: Vec<_> = bucket
                    .children()
                    .filter(|n| n.has_tag_name("rect") && n.attribute("class") != Some("hit"))
                    .collect();
                let total: f64 = rects.iter().map(|r| attr(r, "height")).sum();
                let top = rects
                    .iter()
                    .map(|r| attr(r, "y"))
                    .fold(PLOT_BOTTOM, f64::min);
                assert!(top >= PLOT_TOP, "bar top {top} above the plot");
                assert!(total <= PLOT_HEIGHT + 1e-9);
                // Segments tile: each sits right on the one below.
                for pair in rects.windows(2) {
                    let lower_top = attr(&pair[0], "y");
                    let upper_bottom = attr(&pair[1], "y") + attr(&pair[1], "height");
                    assert!((lower_top - upper_bottom).abs() < 1e-9);
                }
            }
            // Bucket 2 (87 of 100) is 87% of the plot.
            let third = with_class(doc, "g", "bucket").nth(2).unwrap();
            let total: f64 = third
                .children()
                .filter(|n| n.attribute("class").is_some_and(|c| c.starts_with("bar")))
                .map(|r| attr(&r, "height"))
                .sum();
            assert!((total - 0.87 * PLOT_HEIGHT).abs() < 0.02, "{total}");
        });
    }

    #[test]
    fn empty_and_zero_inputs_give_valid_charts() {
        let zeros = [0.0; 12];
        let nothing: [f64; 0] = [];
        let cases = [
            chart(vec![]),
            chart(vec![Series {
                label: "empty",
                tone: Tone::Neutral,
                values: &nothing,
            }]),
            chart(vec![Series {
                label: "zeros",
                tone: Tone::Neutral,
                values: &zeros,
            }]),
        ];
        for c in &cases {
            for out in [bars(c), lines(c)] {
                assert_sane(&out);
                parse(&out, |doc| assert_eq!(y_max(doc), "1 deliveries"));
            }
        }
        assert!(bars(&cases[0]).contains("No data"));
        assert!(lines(&cases[1]).contains("No data"));
        parse(&bars(&cases[2]), |doc| {
            assert_eq!(with_class(doc, "g", "bucket").count(), 12);
            assert_eq!(with_class(doc, "rect", "bar").count(), 0);
        });
    }

    #[test]
    fn unusable_values_count_as_zero() {
        let weird = [f64::NAN, -5.0, f64::INFINITY, f64::NEG_INFINITY, 4.0];
        let c = chart(vec![Series {
            label: "weird",
            tone: Tone::Warn,
            values: &weird,
        }]);
        for out in [bars(&c), lines(&c)] {
            assert_sane(&out);
            parse(&out, |doc| assert_eq!(y_max(doc), "4 deliveries"));
        }
        parse(&bars(&c), |doc| {
            assert_eq!(with_class(doc, "rect", "bar").count(), 1);
        });
    }

    #[test]
    fn lines_draw_one_polyline_per_series() {
        let p50 = [12.0, 15.5, 9.25, 30.0];
        let p99 = [120.0, 80.0];
        let one = [7.0];
        let c = Chart {
            title: "Delivery time",
            unit: "ms",
            start: "1 h ago",
            end: "now",
            series: vec![
                Series {
                    label: "p50",
                    tone: Tone::Good,
                    values: &p50,
                },
                Series {
                    label: "p99",
                    tone: Tone::Warn,
                    values: &p99,
                },
                Series {
                    label: "one",
                    tone: Tone::Neutral,
                    values: &one,
                },
            ],
        };
        let out = lines(&c);
        assert_sane(&out);
        parse(&out, |doc| {
            let polylines: Vec<_> = with_class(doc, "polyline", "line").collect();
            assert_eq!(polylines.len(), 2);
            let points = |n: &roxmltree::Node| n.attribute("points").unwrap().split(' ').count();
            assert_eq!(points(&polylines[0]), 4);
            assert_eq!(points(&polylines[1]), 2);
            assert_eq!(with_class(doc, "circle", "point").count(), 1);
            assert_eq!(with_class(doc, "g", "bucket").count(), 4);
            assert_eq!(y_max(doc), "150 ms");
            let last_tip = with_class(doc, "g", "bucket")
                .last()
                .and_then(|g| g.children().find(|n| n.has_tag_name("title")))
                .and_then(|t| t.text())
                .unwrap();
            assert_eq!(last_tip, "p50 30 ms");
            for y in polylines[0]
                .attribute("points")
                .unwrap()
                .split(' ')
                .map(|p| p.split_once(',').unwrap().1.parse::<f64>().unwrap())
            {
                assert!((PLOT_TOP..=PLOT_BOTTOM).contains(&y));
            }
        });
    }

    #[test]
    fn legend_has_a_swatch_per_series() {
        let v = [1.0];
        let c = chart(vec![
            Series {
                label: "succeeded",
                tone: Tone::Good,
                values: &v,
            },
            Series {
                label: "retrying",
                tone: Tone::Warn,
                values: &v,
            },
        ]);
        parse(&bars(&c), |doc| {
            let items: Vec<_> = with_class(doc, "li", "legend-item").collect();
            assert_eq!(items.len(), 2);
            let swatch = items[1].first_element_child().unwrap();
            assert_eq!(swatch.attribute("class"), Some("swatch tone-warn"));
        });
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(950.0), "950");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(1000.0), "1k");
        assert_eq!(compact(1234.0), "1.2k");
        assert_eq!(compact(999_960.0), "1M");
        assert_eq!(compact(3_400_000.0), "3.4M");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.4 * 1024.0 * 1024.0), "3.4 MiB");
        assert_eq!(bytes(1024.0 * 1024.0 * 1024.0), "1 GiB");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(2.005), "2.01");
        assert_eq!(num(f64::NAN), "0");
    }

    #[test]
    fn the_axis_tops_out_at_a_round_number() {
        assert_eq!(axis_top(0.0, "deliveries"), 1.0);
        assert_eq!(axis_top(87.0, "deliveries"), 100.0);
        assert_eq!(axis_top(3.0, "deliveries"), 3.0);
        assert_eq!(axis_top(1234.0, "deliveries"), 1500.0);
        assert_eq!(amount(axis_top(1234.0, "x"), "x"), "1.5k x");
        // 1010 KiB rounds to 1 MiB, not to "1500 KiB".
        assert_eq!(amount(axis_top(1010.0 * 1024.0, BYTES), BYTES), "1 MiB");
        assert_eq!(
            amount(axis_top(3.4 * 1024.0 * 1024.0, BYTES), BYTES),
            "4 MiB"
        );
    }

    #[test]
    fn output_is_stable_and_ids_differ_between_charts() {
        let v = [1.0, 2.0];
        let a = chart(vec![Series {
            label: "a",
            tone: Tone::Good,
            values: &v,
        }]);
        let b = Chart {
            title: "Other",
            ..chart(vec![])
        };
        assert_eq!(bars(&a), bars(&a));
        assert_ne!(chart_id(&a, Kind::Bars), chart_id(&b, Kind::Bars));
        assert_ne!(chart_id(&a, Kind::Bars), chart_id(&a, Kind::Lines));
    }
}
