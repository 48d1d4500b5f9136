//! `/metrics` as a scraper reads it: Prometheus text 0.0.4 unless the
//! scraper asks for OpenMetrics, each valid for its own parser (and for
//! `promtool` when it is installed); what the delivery metrics count; the
//! build and process metrics; and endpoints that are removed taking their
//! series with them.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// GETs `/metrics` with `accept` (none: no header); the content type and the body.
async fn get_metrics(admin: SocketAddr, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let r = send(admin, None, "GET", "/metrics", &headers, Vec::<u8>::new()).await;
    assert_eq!(r.status, 200);
    let content_type = r.headers["content-type"].to_str().unwrap().to_string();
    (content_type, String::from_utf8(r.body.to_vec()).unwrap())
}

/// `promtool check metrics` on `text`: its complaints (none: it printed
/// nothing and exited 0). Without promtool: `None` with a note, or a
/// failure when `CI` is set (CI installs Debian's `prometheus`).
fn promtool(text: &str) -> Option<String> {
    let out = run_with_stdin("promtool", &["check", "metrics"], text)?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() {
        said
    } else {
        format!("exit {:?}: {said}", out.status.code())
    })
}

/// The counter `name` of `target` with `outcome` (Prometheus text).
fn by_outcome(s: &prometheus_parse::Scrape, name: &str, target: &str, outcome: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| x.labels.get("target") == Some(target))
        .filter(|x| x.labels.get("outcome") == Some(outcome))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
        .sum()
}

/// Reads `text` with the OpenMetrics parser of the Prometheus Python
/// client (the format's reference parser; promtool reads only 0.0.4): each
/// family's type and unit, and each sample as (name, labels, value). `None`
/// with a note when python3 or the module is missing, or a failure when
/// `CI` is set (CI installs `prometheus-client` with pip).
fn openmetrics_parse(text: &str) -> Option<serde_json::Value> {
    const READ: &str = "\
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse
out = {}
for f in parse(sys.stdin.read()):
    out[f.name] = {'type': f.type, 'unit': f.unit,
                   'samples': [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
";
    let out = run_with_stdin("python3", &["-c", READ], text)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'prometheus_client'") {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3's prometheus_client is needed in CI"
            );
            eprintln!("OpenMetrics parser not run: {err}");
            return None;
        }
        panic!("not OpenMetrics: {err}\n{text}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Runs `program` with `input` on its standard input. `None` with a note
/// when it is not installed, or a failure when `CI` is set.
fn run_with_stdin(program: &str, args: &[&str], input: &str) -> Option<std::process::Output> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} is needed in CI: {e}"
            );
            eprintln!("{program} not run: {e}");
            return None;
        }
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

/// The value of the sample `sample` of family `family` whose labels
/// include `labels`, from what [`openmetrics_parse`] read.
fn om_value(
    families: &serde_json::Value,
    family: &str,
    sample: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][k] == *v))
        .and_then(|s| s[2].as_f64())
}

#[tokio::test]
async fn both_formats_parse_and_count_what_they_name() {
    let ok = Receiver::ok().await;
    let failing = Receiver::start(Arc::new(|_| (500, Duration::ZERO))).await;
    let app = spawn_app(&format!(
        "[[routes]]\nname = \"t\"\npath = \"/t/{{event}}\"\n\
         [[routes.targets]]\nname = \"ok\"\nurl = \"{}\"\n\
         [[routes.targets]]\nname = \"failing\"\nurl = \"{}\"\nevents = [\"will_fail\"]\nmax_attempts = 2\n",
        ok.url("/in"),
        failing.url("/in")
    ))
    .await;
    let admin = app.relay.admin_addrs()[0];
    for event in ["new_order", "new_order", "new_order", "will_fail"] {
        post_event(&app, &format!("/t/{event}"), "{}").await;
    }
    // An attempt is counted just after the store records it.
    eventually_async("4 delivered and 1 dead", async || {
        let s = scrape(admin).await;
        let d = |outcome| metric(&s, "hookrelay_deliveries_total", Some(("outcome", outcome)));
        (d("delivered") == 4.0 && d("dead") == 1.0).then_some(())
    })
    .await;

    // No Accept header: Prometheus text 0.0.4.
    let (content_type, text) = get_metrics(admin, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    for line in text.lines().filter(|l| l.ends_with(" counter")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            name.ends_with("_total"),
            "a 0.0.4 counter is named with _total: {line}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no help for {name}"
        );
    }
    assert!(!text.contains("_created"), "{text}");
    if let Some(complaints) = promtool(&text) {
        assert_eq!(complaints, "", "promtool check metrics:\n{text}");
    }
    let s = scrape(admin).await;
    // Attempts are requests; deliveries are what finished.
    assert_eq!(
        by_outcome(&s, "hookrelay_attempts_total", "t/ok", "succeeded"),
        4.0
    );
    assert_eq!(
        by_outcome(&s, "hookrelay_attempts_total", "t/failing", "failed"),
        2.0
    );
    assert_eq!(
        by_outcome(&s, "hookrelay_deliveries_total", "t/ok", "delivered"),
        4.0
    );
    assert_eq!(
        by_outcome(&s, "hookrelay_deliveries_total", "t/failing", "dead"),
        1.0
    );
    assert_eq!(
        by_outcome(&s, "hookrelay_deliveries_total", "t/failing", "delivered"),
        0.0
    );
    // The queue is work still to do; dead letters have their own gauge.
    let states: BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.metric == "hookrelay_queue_depth")
        .map(|x| x.labels.get("state").unwrap())
        .collect();
    assert_eq!(states, BTreeSet::from(["in_flight", "pending"]));
    assert_eq!(metric(&s, "hookrelay_queue_depth", None), 0.0);
    assert_eq!(metric(&s, "hookrelay_dead_letters", None), 1.0);
    assert_eq!(
        metric(
            &s,
            "hookrelay_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        1.0
    );
    // Process metrics, read now from /proc.
    let rss = metric(&s, "process_resident_memory_bytes", None);
    assert!(rss > 1e6, "{rss}");
    assert!(metric(&s, "process_virtual_memory_bytes", None) >= rss);
    let fds = metric(&s, "process_open_fds", None);
    assert!(
        fds >= 3.0 && fds <= metric(&s, "process_max_fds", None),
        "{fds}"
    );
    assert!(metric(&s, "process_cpu_seconds_total", None) > 0.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = metric(&s, "process_start_time_seconds", None);
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );

    // Asked for OpenMetrics (as Prometheus asks): OpenMetrics 1.0.0.
    let (content_type, om) = get_metrics(
        admin,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert_eq!(content_type, format!("{OPENMETRICS}; charset=utf-8"));
    assert!(om.ends_with("# EOF\n"));
    for family in ["hookrelay_deliveries", "hookrelay_attempts"] {
        assert!(om.contains(&format!("# TYPE {family} counter\n")), "{om}");
    }
    assert!(om.contains("# UNIT hookrelay_attempt_duration_seconds seconds\n"));
    if let Some(families) = openmetrics_parse(&om) {
        assert_eq!(families["hookrelay_deliveries"]["type"], "counter");
        assert_eq!(families["hookrelay_build"]["type"], "info");
        assert_eq!(
            families["hookrelay_attempt_duration_seconds"]["type"],
            "histogram"
        );
        assert_eq!(
            families["hookrelay_attempt_duration_seconds"]["unit"],
            "seconds"
        );
        assert_eq!(families["process_resident_memory_bytes"]["unit"], "bytes");
        let total = |family: &str, target: &str, outcome: &str| {
            om_value(
                &families,
                family,
                &format!("{family}_total"),
                &[("target", target), ("outcome", outcome)],
            )
        };
        assert_eq!(
            total("hookrelay_deliveries", "t/failing", "dead"),
            Some(1.0)
        );
        assert_eq!(total("hookrelay_attempts", "t/ok", "succeeded"), Some(4.0));
        assert_eq!(
            om_value(
                &families,
                "hookrelay_dead_letters",
                "hookrelay_dead_letters",
                &[]
            ),
            Some(1.0)
        );
        assert_eq!(
            om_value(
                &families,
                "hookrelay_build",
                "hookrelay_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
    }
}

/// The targets named by any sample of the Prometheus text answer.
async fn targets_with_series(admin: SocketAddr) -> BTreeSet<String> {
    scrape(admin)
        .await
        .samples
        .iter()
        .filter_map(|x| x.labels.get("target").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn removed_endpoints_take_their_series_with_them() {
    let rx = Receiver::ok().await;
    let targets = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "[[routes.targets]]\nname = \"{n}\"\nurl = \"{}\"\n",
                    rx.url("/in")
                )
            })
            .collect()
    };
    let route = "[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n";
    let app = spawn_app(&format!("{route}{}", targets(&["kept", "dropped"]))).await;
    let admin_addr = app.relay.admin_addrs()[0];
    let endpoint = created(
        &app,
        "/api/endpoints",
        json!({"name": "Deleted later", "url": rx.url("/in"), "events": ["*"]}),
    )
    .await;
    let hook = created(
        &app,
        "/api/hooks",
        json!({"target_url": rx.url("/in"), "event": "new_order"}),
    )
    .await;

    post_event(&app, "/t/new_order", "{}").await;
    rx.wait_for(4).await;
    let all: BTreeSet<String> = ["t/kept", "t/dropped", endpoint.as_str(), hook.as_str()]
        .map(String::from)
        .into();
    // An attempt is counted just after the store records it.
    eventually_async("every target's deliveries counted", async || {
        let s = scrape(admin_addr).await;
        let counted: BTreeSet<String> = s
            .samples
            .iter()
            .filter(|x| x.metric == "hookrelay_deliveries_total")
            .filter_map(|x| x.labels.get("target").map(str::to_string))
            .collect();
        (counted == all).then_some(())
    })
    .await;
    assert_eq!(targets_with_series(admin_addr).await, all);

    let r = admin(&app, "DELETE", &format!("/api/endpoints/{endpoint}"), None).await;
    assert_eq!(r.status, 204);
    let r = admin(&app, "DELETE", &format!("/api/hooks/{hook}"), None).await;
    assert_eq!(r.status, 204);
    let config = test_config(&format!("{route}{}", targets(&["kept"])), app.dir.path());
    app.relay.reload(config).await.unwrap();

    let after = targets_with_series(admin_addr).await;
    assert_eq!(after, BTreeSet::from(["t/kept".to_string()]));
    // The kept target's counters are still there, in every family.
    let s = scrape(admin_addr).await;
    let kept: BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.labels.get("target") == Some("t/kept"))
        .map(|x| x.metric.as_str())
        .collect();
    for name in [
        "hookrelay_attempts_total",
        "hookrelay_deliveries_total",
        "hookrelay_attempt_duration_seconds",
        "hookrelay_end_to_end_latency_seconds",
        "hookrelay_circuit_state",
    ] {
        assert!(kept.contains(name), "{name} of t/kept: {kept:?}");
    }
}

#[tokio::test]
async fn a_subscription_answering_410_counts_its_deliveries_cancelled() {
    let gone = Receiver::start(Arc::new(|_| (410, Duration::ZERO))).await;
    let app = spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    let admin_addr = app.relay.admin_addrs()[0];
    let hook = created(
        &app,
        "/api/hooks",
        json!({"target_url": gone.url("/zap"), "event": "new_order"}),
    )
    .await;
    post_event(&app, "/t/new_order", "{}").await;
    gone.wait_for(1).await;
    let s = eventually_async("the delivery counted cancelled", async || {
        let s = scrape(admin_addr).await;
        (by_outcome(&s, "hookrelay_deliveries_total", &hook, "cancelled") == 1.0).then_some(s)
    })
    .await;
    assert_eq!(
        by_outcome(&s, "hookrelay_attempts_total", &hook, "failed"),
        1.0
    );
    assert_eq!(
        by_outcome(&s, "hookrelay_deliveries_total", &hook, "dead"),
        0.0
    );
    assert_eq!(gone.count(), 1);
}
