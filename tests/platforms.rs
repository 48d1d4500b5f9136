//! Every fixture of every platform, through that platform's example config
//! in config/examples/, to real loopback receivers: what each receiver gets
//! (body, content type, event type, signature, auth), parsed back where the
//! body was shaped.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use hookrelay::config::Config;
use hookrelay::store::{EventId, State};
use hookrelay::Relay;
use serde_json::{json, Value};

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// An example config running in-process, each target's URL pointed at its
/// own loopback receiver and the store in a temp dir.
struct Example {
    config: Config,
    relay: Relay,
    receivers: HashMap<String, Receiver>,
    secrets: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Example {
    async fn start(file: &str) -> Example {
        Example::start_with(file, |_| Arc::new(|_| (200, Duration::ZERO))).await
    }

    /// `start`, each receiver answering by the script `script(target name)` gives.
    async fn start_with(file: &str, script: impl Fn(&str) -> Script) -> Example {
        let path = example_path(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut doc: toml::Table = text.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let table = |doc: &mut toml::Table, key: &str| -> toml::Table {
            doc.get(key)
                .and_then(|v| v.as_table())
                .cloned()
                .unwrap_or_default()
        };
        let mut ingest = table(&mut doc, "ingest");
        ingest.insert("listen".into(), toml::Value::from(vec!["127.0.0.1:0"]));
        doc.insert("ingest".into(), ingest.into());
        let mut admin = table(&mut doc, "admin");
        admin.insert("listen".into(), toml::Value::from(vec!["127.0.0.1:0"]));
        doc.insert("admin".into(), admin.into());
        // The receivers run on loopback, which the egress guard denies by default.
        let mut egress = table(&mut doc, "egress");
        egress.insert("allow".into(), toml::Value::from(vec!["127.0.0.0/8"]));
        doc.insert("egress".into(), egress.into());
        let mut store = table(&mut doc, "store");
        let store_path = dir.path().join("store").display().to_string();
        store.insert("path".into(), store_path.into());
        doc.insert("store".into(), store.into());

        let mut receivers = HashMap::new();
        let mut secrets = HashMap::new();
        for route in doc["routes"].as_array_mut().unwrap() {
            for target in route["targets"].as_array_mut().unwrap() {
                let target = target.as_table_mut().unwrap();
                let name = target["name"].as_str().unwrap().to_string();
                let rx = Receiver::start(script(&name)).await;
                target.insert("url".into(), rx.url(&format!("/{name}")).into());
                if let Some(s) = target.get("secret").and_then(|s| s.as_str()) {
                    secrets.insert(name.clone(), s.to_string());
                }
                receivers.insert(name, rx);
            }
        }
        // Parsed as if it were the example file, so relative paths resolve the same.
        let config =
            Config::parse(&toml::to_string(&doc).unwrap(), &path).unwrap_or_else(|e| panic!("{e}"));
        let relay = Relay::start(config.clone()).await.expect("relay starts");
        Example {
            config,
            relay,
            receivers,
            secrets,
            _dir: dir,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.relay.ingest_addrs()[0]
    }

    /// Posts `body`; returns the event id and how many deliveries it made.
    async fn post(&self, path: &str, body: Vec<u8>) -> (String, u64) {
        let r = post_json(self.addr(), path, body).await;
        assert_eq!(r.status, 202, "{path}: {:?}", r.body);
        let j = r.json();
        (
            j["id"].as_str().unwrap().to_string(),
            j["deliveries"].as_u64().unwrap(),
        )
    }

    /// What receiver `target` got for event `id`; checks its signature when
    /// the target signs.
    fn got(&self, target: &str, id: &str) -> Received {
        let req = self.receivers[target]
            .received()
            .into_iter()
            .find(|r| r.headers["webhook-id"] == id)
            .unwrap_or_else(|| panic!("{target} got nothing for {id}"));
        if let Some(secret) = self.secrets.get(target) {
            assert!(
                verify_signature(secret, &req.headers, &req.body),
                "{target}: signature over the bytes sent"
            );
        } else {
            assert!(req.headers.get("webhook-signature").is_none());
        }
        req
    }

    fn nothing_for(&self, target: &str, id: &str) -> bool {
        self.receivers[target]
            .received()
            .iter()
            .all(|r| r.headers["webhook-id"] != id)
    }

    /// Waits until every delivery of every event in `ids` has succeeded.
    async fn all_succeeded(&self, ids: &[String]) {
        let store = self.relay.store().clone();
        let ids: Vec<EventId> = ids.iter().map(|i| EventId::parse(i).unwrap()).collect();
        eventually_async("every delivery succeeded", async || {
            for id in &ids {
                let ds = store.deliveries_of(*id).await.unwrap();
                if !ds.iter().all(|(_, d)| d.state == State::Succeeded) {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}

fn example_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(file)
}

/// The fixture files of a platform, as (file stem, bytes), sorted.
fn fixtures(platform: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(platform);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            (stem.clone(), fixture(&format!("{platform}/{stem}.json")))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures for {platform}");
    out
}

fn header<'a>(req: &'a Received, name: &str) -> &'a str {
    req.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Parses an XML body and checks it holds `json` under `root`, by the
/// documented mapping (walked independently of hookrelay's writer).
fn assert_xml_is(body: &[u8], root: &str, json: &Value) {
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
        "{text}"
    );
    let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let el = doc.root_element();
    assert_eq!(el.tag_name().name(), root);
    assert_element_is(el, json, "");
}

fn assert_element_is(el: roxmltree::Node<'_, '_>, value: &Value, at: &str) {
    let children: Vec<_> = el.children().filter(|n| n.is_element()).collect();
    match value {
        Value::Object(map) => {
            let expected: usize = map.values().map(|v| v.as_array().map_or(1, Vec::len)).sum();
            assert_eq!(children.len(), expected, "{at}: element count");
            for (key, v) in map {
                let named: Vec<_> = children
                    .iter()
                    .filter(|c| c.tag_name().name() == key)
                    .collect();
                match v {
                    Value::Array(items) => {
                        assert_eq!(named.len(), items.len(), "{at}/{key}: repeated elements");
                        for (c, item) in named.iter().zip(items) {
                            assert_element_is(**c, item, &format!("{at}/{key}[]"));
                        }
                    }
                    _ => {
                        assert_eq!(named.len(), 1, "{at}/{key}");
                        assert_element_is(*named[0], v, &format!("{at}/{key}"));
                    }
                }
            }
        }
        Value::Array(items) => {
            assert_eq!(children.len(), items.len(), "{at}: items");
            for (c, item) in children.iter().zip(items) {
                assert_eq!(c.tag_name().name(), "item");
                assert_element_is(*c, item, &format!("{at}[]"));
            }
        }
        Value::Null => {
            assert_eq!(el.attribute((XSI, "nil")), Some("true"), "{at}: null");
            assert!(el.first_child().is_none(), "{at}: null is empty");
        }
        Value::String(s) => {
            assert!(children.is_empty());
            assert_eq!(el.text().unwrap_or(""), s, "{at}");
        }
        Value::Number(n) => {
            let text = el.text().unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), n.as_f64().unwrap(), "{at}");
        }
        Value::Bool(b) => assert_eq!(el.text().unwrap(), b.to_string(), "{at}"),
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

// === Heights: one URL per event ===

#[tokio::test]
async fn heights_fixtures_reach_every_receiver_in_its_shape() {
    let app = Example::start("heights.toml").await;
    let mut posted = Vec::new();
    for (event, body) in fixtures("heights") {
        let (id, n) = app.post(&format!("/heights/{event}"), body.clone()).await;
        let mailer =
            ["new_student", "student_completed", "course_completed"].contains(&event.as_str());
        let expected = 1 + u64::from(event == "new_order") + u64::from(mailer);
        assert_eq!(n, expected, "{event}: deliveries");
        posted.push((event, body, id));
    }
    let ids: Vec<String> = posted.iter().map(|(_, _, id)| id.clone()).collect();
    app.all_succeeded(&ids).await;

    for (event, body, id) in &posted {
        let fixture = json_of(body);
        // crm: every event, bytes untouched.
        let crm = app.got("crm", id);
        assert_eq!(&crm.body[..], &body[..], "{event}");
        assert_eq!(header(&crm, "content-type"), "application/json");
        assert_eq!(header(&crm, "webhook-event-type"), event);

        // erp: orders only, as XML, behind basic auth.
        if event == "new_order" {
            let erp = app.got("erp", id);
            assert_eq!(header(&erp, "content-type"), "application/xml");
            assert_eq!(header(&erp, "webhook-event-type"), "new_order");
            assert_eq!(
                header(&erp, "authorization"),
                basic("hookrelay", "change-me")
            );
            assert_xml_is(&erp.body, "order", &fixture);
        } else {
            assert!(app.nothing_for("erp", id), "{event} is not for erp");
        }

        // mailer: its own body, from the template file.
        if app.receivers["mailer"]
            .received()
            .iter()
            .any(|r| r.headers["webhook-id"] == id.as_str())
        {
            let mailer = app.got("mailer", id);
            assert_eq!(header(&mailer, "content-type"), "application/json");
            assert_eq!(header(&mailer, "x-api-key"), "change-me");
            let got = json_of(&mailer.body);
            let mut tags = vec![json!(format!("heights:{event}"))];
            if let Some(course) = fixture.get("course") {
                tags.push(json!(format!("course:{}", course.as_str().unwrap())));
            }
            assert_eq!(got["email"], fixture["email"]);
            assert_eq!(got["name"], fixture["name"]);
            assert_eq!(got["tags"], Value::Array(tags), "{event}");
            assert_eq!(got["event_id"], json!(id));
            assert!(got["occurred_at"].as_str().unwrap().ends_with('Z'));
        }
    }
    assert_eq!(app.receivers["crm"].received().len(), 6);
    assert_eq!(app.receivers["erp"].received().len(), 1);
    assert_eq!(app.receivers["mailer"].received().len(), 3);
}

// === BrainCert: the event named by resource and action ===

#[tokio::test]
async fn braincert_fixtures_are_typed_by_resource_and_action() {
    let app = Example::start("braincert.toml").await;
    let crm_wants = |t: &str| {
        [
            "user.",
            "course_enrollment.",
            "test_enrollment.",
            "purchase.",
        ]
        .iter()
        .any(|p| t.starts_with(p))
    };
    let chat_wants = |t: &str| t == "course_completion.completed" || t == "assessment.completed";
    let mut posted = Vec::new();
    for (name, body) in fixtures("braincert") {
        let fixture = json_of(&body);
        let event_type = format!(
            "{}.{}",
            fixture["resource"].as_str().unwrap(),
            fixture["action"].as_str().unwrap()
        );
        let (id, n) = app.post("/braincert", body.clone()).await;
        let expected = 1 + u64::from(crm_wants(&event_type)) + u64::from(chat_wants(&event_type));
        assert_eq!(n, expected, "{name} ({event_type}): deliveries");
        posted.push((name, body, fixture, event_type, id));
    }
    assert_eq!(posted.len(), 23);
    let ids: Vec<String> = posted.iter().map(|p| p.4.clone()).collect();
    app.all_succeeded(&ids).await;

    for (name, body, fixture, event_type, id) in &posted {
        let stored = app
            .relay
            .store()
            .event(EventId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&stored.meta.event_type, event_type, "{name}");

        let wh = app.got("warehouse", id);
        assert_eq!(&wh.body[..], &body[..], "{name}");
        assert_eq!(header(&wh, "content-type"), "application/json");
        assert_eq!(header(&wh, "webhook-event-type"), event_type);

        if crm_wants(event_type) {
            let crm = app.got("crm", id);
            assert_eq!(header(&crm, "content-type"), "application/xml");
            assert_eq!(header(&crm, "webhook-event-type"), event_type);
            assert_eq!(header(&crm, "authorization"), basic("lms", "change-me"));
            assert_xml_is(&crm.body, "braincert", fixture);
        } else {
            assert!(app.nothing_for("crm", id), "{name} is not for crm");
        }

        if chat_wants(event_type) {
            let chat = app.got("chat", id);
            assert_eq!(header(&chat, "content-type"), "application/json");
            assert_eq!(header(&chat, "authorization"), "Bearer change-me");
            let p = &fixture["payload"];
            let who = format!(
                "{} {}",
                p["user"]["first_name"].as_str().unwrap(),
                p["user"]["last_name"].as_str().unwrap()
            );
            let what = if fixture["resource"] == "course_completion" {
                p["course"]["title"].as_str().unwrap().to_string()
            } else {
                format!(
                    "{} (score {})",
                    p["name"].as_str().unwrap(),
                    p["final_score"]
                )
            };
            assert_eq!(
                json_of(&chat.body),
                json!({"text": format!("{who} completed {what}"), "event": event_type}),
                "{name}"
            );
        } else {
            assert!(app.nothing_for("chat", id), "{name} is not for chat");
        }
    }
    // Posting a fixture again is a duplicate (dedup on resource, action and id).
    let (name, body, _, _, first) = &posted[0];
    let r = post_json(app.addr(), "/braincert", body.clone()).await;
    assert_eq!(r.json()["duplicate"], true, "{name}");
    assert_eq!(r.json()["id"].as_str().unwrap(), first);
}

// === Live Events: notifiableId is the course ===

#[tokio::test]
async fn live_events_fixture_reaches_archive_hr_and_compliance() {
    let app = Example::start("live-events.toml").await;
    let (_, body) = fixtures("live-events").remove(0);
    let fixture = json_of(&body);
    let (id, n) = app.post("/live-events", body.clone()).await;
    assert_eq!(n, 3);
    app.all_succeeded(std::slice::from_ref(&id)).await;

    let archive = app.got("archive", &id);
    assert_eq!(&archive.body[..], &body[..]);
    assert_eq!(header(&archive, "webhook-event-type"), "courseCompletion");

    let hr = app.got("hr", &id);
    assert_eq!(&hr.body[..], &body[..]);
    assert_eq!(header(&hr, "content-type"), "application/json");
    assert_eq!(header(&hr, "x-api-key"), "change-me");

    let compliance = app.got("compliance", &id);
    assert_eq!(header(&compliance, "content-type"), "application/xml");
    assert_xml_is(&compliance.body, "courseCompletion", &fixture);
    // The fixture's nulls come out as xsi:nil.
    assert!(std::str::from_utf8(&compliance.body)
        .unwrap()
        .contains(r#"<sfContactId xsi:nil="true"/>"#));
}

#[tokio::test]
async fn notifiable_id_filter_lets_one_course_through_and_holds_another_back() {
    let app = Example::start("live-events.toml").await;
    let (_, body) = fixtures("live-events").remove(0);
    let mut other: Value = json_of(&body);
    other["id"] = json!("5b0f4c1e-0000-4000-8000-000000000001");
    other["notifiableId"] = json!("00000000-aaaa-4bbb-8ccc-000000000002");
    other["title"] = json!("Another Course");

    let (through, n) = app.post("/live-events", body.clone()).await;
    assert_eq!(n, 3, "archive, hr and compliance");
    let (held, n) = app
        .post("/live-events", serde_json::to_vec(&other).unwrap())
        .await;
    assert_eq!(
        n, 1,
        "archive only: no delivery is made for hr or compliance"
    );
    app.all_succeeded(&[through.clone(), held.clone()]).await;

    assert_eq!(app.got("hr", &through).body, body);
    assert!(app.nothing_for("hr", &held));
    assert!(app.nothing_for("compliance", &held));
    app.got("archive", &held);
    let targets: Vec<String> = app
        .relay
        .store()
        .deliveries_of(EventId::parse(&held).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|(_, d)| d.target)
        .collect();
    assert_eq!(targets, vec!["live-events/archive"]);

    // Another course reaches compliance through the other branch of its
    // filter: someone in the Compliance department.
    other["id"] = json!("5b0f4c1e-0000-4000-8000-000000000003");
    other["userDetail"]["ref2"] = json!("Compliance");
    let (by_department, n) = app
        .post("/live-events", serde_json::to_vec(&other).unwrap())
        .await;
    assert_eq!(n, 2, "archive and compliance");
    app.all_succeeded(std::slice::from_ref(&by_department))
        .await;
    assert_xml_is(
        &app.got("compliance", &by_department).body,
        "courseCompletion",
        &other,
    );
    assert!(app.nothing_for("hr", &by_department));
}

// === per-target delivery policy ===

#[tokio::test]
async fn live_events_hr_counts_redirects_as_success_and_retries_like_the_platform() {
    // Every receiver answers 302.
    let app =
        Example::start_with("live-events.toml", |_| Arc::new(|_| (302, Duration::ZERO))).await;
    let route = &app.config.routes[0];
    let policy = |name: &str| {
        let t = route.targets.iter().find(|t| t.name == name).unwrap();
        t.policy(&app.config.delivery)
    };
    let hr = policy("hr");
    assert!(hr.success.contains(200) && hr.success.contains(308) && !hr.success.contains(309));
    // The platform's own schedule: 10 retries over about 3.5 hours.
    assert_eq!(hr.max_attempts, 11);
    assert_eq!(hr.backoff.delay(1), Duration::from_secs(20));
    assert_eq!(hr.backoff.delay(10), Duration::from_secs(3600));
    let waits: Duration = (1..hr.max_attempts).map(|n| hr.backoff.delay(n)).sum();
    assert_eq!(waits, Duration::from_secs(3 * 3600 + 25 * 60));
    assert_eq!(hr.backoff.jitter, 0.2);
    assert_eq!(hr.timeout, Duration::from_secs(15));
    assert!(!policy("archive").success.contains(302));

    let (_, body) = fixtures("live-events").remove(0);
    let (id, _) = app.post("/live-events", body).await;
    let store = app.relay.store().clone();
    let event = EventId::parse(&id).unwrap();
    let states = eventually_async("hr succeeded and archive is retrying", async || {
        let ds = store.deliveries_of(event).await.unwrap();
        let state = |t: &str| {
            ds.iter()
                .find(|(_, d)| d.target == t)
                .map(|(_, d)| d.clone())
        };
        let hr = state("live-events/hr")?;
        let archive = state("live-events/archive")?;
        (hr.state == State::Succeeded && archive.attempts >= 1).then_some((hr, archive))
    })
    .await;
    let (hr, archive) = states;
    assert_eq!(hr.attempts, 1, "302 is a success for hr");
    assert_eq!(
        archive.state,
        State::Pending,
        "302 is a failure for archive"
    );
    assert_eq!(archive.last.as_ref().unwrap().status, Some(302));
    // Its next attempt follows the example's backoff: about 20 s, not now.
    let wait = archive
        .next_at_ms
        .saturating_sub(hookrelay::store::now_ms());
    assert!(wait > 10_000, "next attempt in {wait} ms");
}
