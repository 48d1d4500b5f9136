//! The console at `/ui/`, over real HTTP: sign-in and its cookie, CSRF,
//! what each token scope sees and may press, escaping of what receivers
//! and the LMS sent, the form's errors next to their fields, dead letters
//! replayed, and charts that survive a restart. (The browser story is in
//! tests/console_browser.rs.)

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const READER: &str = "reader-token-0123456789";
const ZAPIER: &str = "zapier-subscriber-token";

fn tokens() -> String {
    format!("{TOKEN} admin\n{READER} read name=auditor\n{ZAPIER} subscriber name=zapier\n")
}

async fn spawn_console(toml: &str, dir: tempfile::TempDir) -> TestApp {
    spawn_app_in(dir, toml, &tokens()).await
}

/// The shared BrainCert route, and a Heights route without a catalog.
fn route() -> String {
    format!(
        "{}[[routes]]\nname = \"heights\"\npath = \"/heights/{{event}}\"\n",
        braincert_catalog_route()
    )
}

/// A signed-in browser, as far as HTTP goes: its cookie and form key.
struct Ui {
    addr: SocketAddr,
    cookie: String,
    csrf: String,
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no form key on the page:\n{page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn sign_in(app: &TestApp, token: &str) -> Ui {
    let addr = app.relay.admin_addrs()[0];
    let r = send(
        addr,
        None,
        "POST",
        "/ui/signin",
        &[("content-type", "application/x-www-form-urlencoded")],
        form(&[("token", token), ("next", "/ui/endpoints")]),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(header(&r, "location"), "/ui/endpoints");
    let set = header(&r, "set-cookie");
    let cookie = set.split(';').next().unwrap().to_string();
    let mut ui = Ui {
        addr,
        cookie,
        csrf: String::new(),
    };
    let page = ui.get("/ui/endpoints").await;
    assert_eq!(page.status, 200);
    ui.csrf = csrf_of(&text(&page));
    ui
}

impl Ui {
    async fn get(&self, path: &str) -> Reply {
        send(
            self.addr,
            None,
            "GET",
            path,
            &[("cookie", &self.cookie)],
            "",
        )
        .await
    }

    /// A form post with the session's form key.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, form(&all), &[]).await
    }

    async fn post_raw(&self, path: &str, body: String, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![
            ("cookie", self.cookie.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        headers.extend_from_slice(extra);
        send(self.addr, None, "POST", path, &headers, body).await
    }
}

/// Every `<form` of a page that posts, but sign-out.
fn changing_forms(page: &str) -> Vec<String> {
    page.match_indices("<form")
        .map(|(i, _)| page[i..i + page[i..].find('>').unwrap() + 1].to_string())
        .filter(|f| f.contains("method=\"post\"") && !f.contains("/ui/signout"))
        .collect()
}

async fn endpoint(app: &TestApp, body: Value) -> Value {
    let r = admin(app, "POST", "/api/endpoints", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_pages_forbid_inline_script() {
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let addr = app.relay.admin_addrs()[0];

    // Not signed in: every page sends the browser to the sign-in form.
    let r = send(addr, None, "GET", "/ui/endpoints", &[], "").await;
    assert_eq!(r.status, 303);
    assert_eq!(header(&r, "location"), "/ui/signin?next=%2Fui%2Fendpoints");
    let r = send(addr, None, "GET", "/ui/signin", &[], "").await;
    assert_eq!(r.status, 200);
    let page = text(&r);
    assert!(page.contains("name=\"token\""), "{page}");
    let csp = header(&r, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!page.contains("<script>"), "no inline script: {page}");

    // A wrong token: 401, no cookie.
    let r = send(
        addr,
        None,
        "POST",
        "/ui/signin",
        &[("content-type", "application/x-www-form-urlencoded")],
        form(&[("token", "not-a-token")]),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("set-cookie").is_none());
    assert!(text(&r).contains("not a token"));

    // The right one: a session cookie that scripts cannot read and other
    // sites cannot send, with an expiry, not Secure without TLS.
    let r = send(
        addr,
        None,
        "POST",
        "/ui/signin",
        &[("content-type", "application/x-www-form-urlencoded")],
        form(&[("token", TOKEN)]),
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(header(&r, "location"), "/ui/");
    let set = header(&r, "set-cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    assert!(!set.contains(TOKEN), "the cookie is not the token");

    // Sign-in elsewhere may not send a browser to another site.
    let r = send(
        addr,
        None,
        "POST",
        "/ui/signin",
        &[("content-type", "application/x-www-form-urlencoded")],
        form(&[("token", TOKEN), ("next", "//evil.example/")]),
    )
    .await;
    assert_eq!(header(&r, "location"), "/ui/");

    // Every page of a session has the policy and the assets are served.
    let ui = sign_in(&app, TOKEN).await;
    for path in [
        "/ui/",
        "/ui/endpoints",
        "/ui/events",
        "/ui/dead",
        "/ui/endpoints/new",
    ] {
        let r = ui.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", text(&r));
        assert!(header(&r, "content-type").starts_with("text/html"));
        assert_eq!(header(&r, "content-security-policy"), csp, "{path}");
        assert_eq!(header(&r, "x-frame-options"), "DENY");
        assert!(!text(&r).contains("<script>"), "{path} has inline script");
        assert!(!text(&r).contains("style=\""), "{path} has inline style");
    }
    let css = ui.get("/ui/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(header(&css, "content-type").starts_with("text/css"));
    let js = ui.get("/ui/assets/console.js").await;
    assert!(header(&js, "content-type").starts_with("text/javascript"));

    // Sign-out ends the session: the cookie no longer opens a page.
    let r = ui.post("/ui/signout", &[]).await;
    assert_eq!(r.status, 303);
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));
    let r = ui.get("/ui/endpoints").await;
    assert_eq!(r.status, 303, "signed out");

    // Guessing tokens: past 20 quick failures sign-in closes for a moment,
    // for the right token too, then opens again by itself.
    let guess = |token: String| async move {
        send(
            addr,
            None,
            "POST",
            "/ui/signin",
            &[("content-type", "application/x-www-form-urlencoded")],
            form(&[("token", &token)]),
        )
        .await
        .status
    };
    let mut closed = false;
    for i in 0..40 {
        if guess(format!("guess-{i}")).await == 429 {
            closed = true;
            break;
        }
    }
    assert!(closed, "40 wrong tokens in a row are not all checked");
    assert_eq!(guess(TOKEN.to_string()).await, 429);
    eventually_async("sign-in to open again", async || {
        (guess(TOKEN.to_string()).await == 303).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_form_without_the_session_key_or_from_another_site_changes_nothing() {
    let rx = Receiver::ok().await;
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let made = endpoint(
        &app,
        json!({"name": "CRM", "url": rx.url("/crm"), "route": "braincert"}),
    )
    .await;
    let id = made["id"].as_str().unwrap();
    let ui = sign_in(&app, TOKEN).await;
    let path = format!("/ui/endpoints/{id}/enabled");

    let r = ui.post_raw(&path, form(&[("enabled", "false")]), &[]).await;
    assert_eq!(r.status, 403, "no form key");
    let r = ui
        .post_raw(
            &path,
            form(&[("enabled", "false"), ("csrf", "forged")]),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "a wrong form key");
    let body = form(&[("enabled", "false"), ("csrf", &ui.csrf)]);
    let r = ui
        .post_raw(&path, body, &[("origin", "http://evil.example")])
        .await;
    assert_eq!(r.status, 403, "another site's form");
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["enabled"], true, "nothing changed");

    // The same form from the console itself pauses it.
    let r = ui.post(&path, &[("enabled", "false")]).await;
    assert_eq!(r.status, 303);
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["enabled"], false);
    let page = text(&ui.get(&format!("/ui/endpoints/{id}")).await);
    assert!(page.contains("Paused: events are kept"), "{page}");
}

#[tokio::test]
async fn a_read_token_sees_everything_and_can_press_nothing_and_a_subscriber_sees_its_own() {
    let rx = Receiver::ok().await;
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let made = endpoint(
        &app,
        json!({"name": "Admin's CRM", "url": rx.url("/crm"), "route": "braincert"}),
    )
    .await;
    let id = made["id"].as_str().unwrap().to_string();
    let zap = admin_as(
        &app,
        Some(ZAPIER),
        "POST",
        "/api/endpoints",
        Some(json!({"name": "Zap one", "url": rx.url("/zap"), "route": "braincert"})),
    )
    .await;
    assert_eq!(zap.status, 201);
    let zap_id = zap.json()["id"].as_str().unwrap().to_string();
    let r = post_json(app.addr, "/braincert", fixture("braincert/new_sale.json")).await;
    assert_eq!(r.status, 202);
    let event = r.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(2).await;

    let reader = sign_in(&app, READER).await;
    let pages = [
        "/ui/".to_string(),
        "/ui/endpoints".into(),
        format!("/ui/endpoints/{id}"),
        format!("/ui/endpoints/{zap_id}"),
        "/ui/events".into(),
        format!("/ui/events/{event}"),
        "/ui/dead".into(),
    ];
    for path in &pages {
        let r = reader.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let page = text(&r);
        assert_eq!(changing_forms(&page), Vec::<String>::new(), "{path}");
        assert!(!page.contains("Add endpoint"), "{path}");
        assert!(page.contains("auditor"), "the page names who is signed in");
    }
    assert!(text(&reader.get("/ui/endpoints").await).contains("Zap one"));
    // What a read token may not do, it may not do by posting either.
    let r = reader
        .post(&format!("/ui/endpoints/{id}/rotate"), &[])
        .await;
    assert_eq!(r.status, 303);
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["secrets"], 1, "no second secret: {e}");
    let page = text(&reader.get(&format!("/ui/endpoints/{id}")).await);
    assert!(page.contains("Secret not rotated"), "{page}");
    assert!(!page.contains("whsec_"), "{page}");
    let r = reader.get("/ui/endpoints/new").await;
    assert_eq!(r.status, 403);

    // A subscriber: its own endpoint, no one else's, no events or dead letters.
    let zapier = sign_in(&app, ZAPIER).await;
    let list = text(&zapier.get("/ui/endpoints").await);
    assert!(list.contains("Zap one"), "{list}");
    assert!(
        !list.contains("Admin&#x27;s CRM") && !list.contains("Admin's CRM"),
        "{list}"
    );
    assert!(!list.contains("href=\"/ui/events\""), "no events link");
    assert_eq!(zapier.get(&format!("/ui/endpoints/{id}")).await.status, 404);
    assert_eq!(zapier.get("/ui/events").await.status, 403);
    let r = zapier.get("/ui/").await;
    assert_eq!(
        r.status, 303,
        "the overview is everyone's; a subscriber goes to its endpoints"
    );
    let own = text(&zapier.get(&format!("/ui/endpoints/{zap_id}")).await);
    assert!(own.contains("Send Test"), "{own}");
    assert!(!own.contains("Rotate secret"), "rotation is an admin's");

    // A token removed from the file ends its sessions.
    std::fs::write(
        app.dir.path().join("admin.tokens"),
        format!("{TOKEN} admin\n{ZAPIER} subscriber name=zapier\n"),
    )
    .unwrap();
    eventually_async("the reader's session to end", async || {
        (reader.get("/ui/endpoints").await.status == 303).then_some(())
    })
    .await;
}

#[tokio::test]
async fn what_receivers_and_the_lms_sent_shows_as_text() {
    // The receiver answers with markup; the LMS sends markup; a name has markup.
    let rx = Receiver::ok().await;
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let made = endpoint(
        &app,
        json!({"name": "<script>alert('name')</script>", "url": rx.url("/crm"), "route": "braincert",
               "headers": {"x-note": "<img src=x onerror=alert(1)>"}}),
    )
    .await;
    let id = made["id"].as_str().unwrap();
    let mut sale: Value = serde_json::from_slice(&fixture("braincert/new_sale.json")).unwrap();
    sale["payload"]["buyer"] = json!("<script>alert('payload')</script>");
    let r = post_json(app.addr, "/braincert", sale.to_string()).await;
    let event = r.json()["id"].as_str().unwrap().to_string();
    rx.wait_for(1).await;
    let ui = sign_in(&app, TOKEN).await;
    for path in [
        "/ui/endpoints".to_string(),
        format!("/ui/endpoints/{id}"),
        format!("/ui/events/{event}"),
        "/ui/events".into(),
    ] {
        let page = text(&ui.get(&path).await);
        assert!(!page.contains("<script>alert"), "{path}: {page}");
        assert!(!page.contains("<img src=x"), "{path}");
    }
    let page = text(&ui.get(&format!("/ui/events/{event}")).await);
    assert!(
        page.contains("&lt;script&gt;alert(&#x27;payload&#x27;)&lt;&#x2f;script&gt;"),
        "the payload is shown, escaped: {page}"
    );
    // The body is pretty-printed.
    assert!(page.contains("\n  &quot;payload&quot;: {"), "{page}");
    // Each attempt shows the headers it sent, the endpoint's own masked.
    assert!(
        page.contains("<dt>x-note</dt><dd><code>***</code></dd>"),
        "{page}"
    );
    assert!(
        page.contains("<dt>webhook-signature</dt><dd><code>v1,"),
        "{page}"
    );
    assert!(
        page.contains("<dt>user-agent</dt><dd><code>hookrelay&#x2f;"),
        "{page}"
    );
}

#[tokio::test]
async fn the_form_shows_the_api_errors_next_to_their_fields_and_keeps_what_was_typed() {
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let ui = sign_in(&app, TOKEN).await;
    // The trigger offers the catalog by category, and the types a route
    // without a catalog has been seen carrying.
    let r = post_json(
        app.addr,
        "/heights/new_order",
        fixture("heights/new_order.json"),
    )
    .await;
    assert_eq!(r.status, 202);
    let page = text(&ui.get("/ui/endpoints/new").await);
    for want in [
        "<legend>Sales <span class=\"help\">(braincert)</span></legend>",
        "<legend>Users <span class=\"help\">(braincert)</span></legend>",
        "<legend>Seen at ingest <span class=\"help\">(heights)</span></legend>",
        "value=\"new_order\"",
    ] {
        assert!(page.contains(want), "{want} in {page}");
    }
    let thief = [
        ("name", "Metadata thief"),
        ("url", "http://169.254.169.254/latest"),
        ("route", "braincert"),
        ("event", "purchase.completed"),
        ("format", "json"),
        ("enabled", "on"),
    ];
    // A number the form itself refuses.
    let r = ui
        .post(
            "/ui/endpoints",
            &[&thief[..], &[("max_attempts", "many")]].concat(),
        )
        .await;
    assert_eq!(r.status, 422);
    let page = text(&r);
    assert!(page.contains("id=\"max_attempts-error\""), "{page}");
    assert!(
        page.contains("value=\"Metadata thief\""),
        "what was typed stays"
    );
    // Fixed locally, the API's own check names the URL.
    let r = ui.post("/ui/endpoints", &thief).await;
    assert_eq!(r.status, 422);
    let page = text(&r);
    let at = page
        .find("id=\"url-error\"")
        .unwrap_or_else(|| panic!("{page}"));
    assert!(page[at..].contains("169.254"), "{}", &page[at..at + 300]);
    assert!(page.contains("aria-invalid=\"true\" aria-describedby=\"url-error\""));
    let list = admin(&app, "GET", "/api/endpoints", None).await.json();
    assert_eq!(
        list["endpoints"].as_array().unwrap().len(),
        0,
        "nothing was made"
    );

    // The preview shapes the catalog example as the form says.
    let r = ui
        .post(
            "/ui/preview",
            &[
                ("route", "braincert"),
                ("event", "purchase.completed"),
                ("format", "xml"),
                ("xml_root", "sale"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let xml = text(&r);
    assert!(xml.contains("<sale"), "{xml}");
    assert!(xml.contains("<order_id>ORD_ep3FVWZ9lC</order_id>"), "{xml}");
    let r = ui
        .post(
            "/ui/preview",
            &[
                ("route", "braincert"),
                ("event", "purchase.completed"),
                ("format", "template"),
                (
                    "template",
                    "{\"order\": {{ payload.payload.order_id | tojson }}}",
                ),
            ],
        )
        .await;
    assert!(
        text(&r).contains("\"order\": \"ORD_ep3FVWZ9lC\""),
        "{}",
        text(&r)
    );

    // Editing keeps what the form does not show: the password and header values.
    let rx = Receiver::ok().await;
    let made = endpoint(
        &app,
        json!({"name": "CRM", "url": rx.url("/crm"), "route": "braincert", "events": ["purchase.completed"],
               "basic_auth": {"username": "u", "password": "pw-1"}, "headers": {"x-api-key": "k-1"}}),
    )
    .await;
    let id = made["id"].as_str().unwrap();
    let page = text(&ui.get(&format!("/ui/endpoints/{id}/edit")).await);
    assert!(!page.contains("pw-1") && !page.contains("k-1"), "{page}");
    assert!(page.contains("x-api-key: ***"), "{page}");
    let r = ui
        .post(
            &format!("/ui/endpoints/{id}/edit"),
            &[
                ("name", "CRM renamed"),
                ("url", &rx.url("/crm")),
                ("route", "braincert"),
                ("event", "purchase.completed"),
                ("format", "json"),
                ("basic_auth", "on"),
                ("username", "u"),
                ("password", ""),
                ("headers", "x-api-key: ***"),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let test = admin(
        &app,
        "POST",
        &format!("/api/endpoints/{id}/test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(test.status, 200);
    let got = rx.wait_for(1).await;
    let auth = got[0].headers["authorization"].to_str().unwrap();
    use base64::Engine;
    assert_eq!(
        auth,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:pw-1")
        )
    );
    assert_eq!(got[0].headers["x-api-key"], "k-1");
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["name"], "CRM renamed");

    // The table filters by the catalog's categories.
    let sales = text(&ui.get("/ui/endpoints?category=Sales").await);
    assert!(
        sales.contains("CRM renamed") && sales.contains("New Sale"),
        "{sales}"
    );
    let users = text(&ui.get("/ui/endpoints?category=Users").await);
    assert!(!users.contains("CRM renamed"), "{users}");
    assert!(users.contains("No endpoints match this filter"), "{users}");
}

#[tokio::test]
async fn replay_all_asks_first_and_says_how_many_were_re_queued() {
    let up = Arc::new(AtomicBool::new(false));
    let rx = Receiver::switchable(up.clone(), 500).await;
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let made = endpoint(
        &app,
        json!({"name": "Flaky CRM", "url": rx.url("/crm"), "route": "braincert", "retry": {"max_attempts": 1}}),
    )
    .await;
    let id = made["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let r = post_json(app.addr, "/braincert", fixture("braincert/new_sale.json")).await;
        assert_eq!(r.status, 202);
    }
    eventually_json(&app, "/api/deliveries?state=dead", |v| {
        v["deliveries"].as_array().unwrap().len() == 3
    })
    .await;
    let ui = sign_in(&app, TOKEN).await;
    let page = text(&ui.get("/ui/dead").await);
    assert!(
        page.contains("Flaky CRM") && page.contains("3 dead"),
        "{page}"
    );
    let confirm = text(&ui.get(&format!("/ui/dead/replay?target={id}")).await);
    assert!(
        confirm.contains("Re-queue 3 dead deliveries of Flaky CRM?"),
        "{confirm}"
    );
    up.store(true, Ordering::SeqCst);
    let r = ui.post("/ui/dead/replay", &[("target", &id)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(header(&r, "location"), "/ui/dead");
    let page = text(&ui.get("/ui/dead").await);
    assert!(
        page.contains(&format!("Re-queued 3 dead deliveries of {id}.")),
        "{page}"
    );
    rx.wait_for(6).await;
    eventually_json(&app, "/api/deliveries?state=succeeded", |v| {
        v["deliveries"].as_array().unwrap().len() == 3
    })
    .await;
}

#[tokio::test]
async fn charts_come_from_the_relays_own_history_and_survive_a_restart() {
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_console(&route(), dir).await;
    let made = endpoint(
        &app,
        json!({"name": "CRM", "url": rx.url("/crm"), "route": "braincert"}),
    )
    .await;
    let id = made["id"].as_str().unwrap().to_string();
    for _ in 0..4 {
        post_json(app.addr, "/braincert", fixture("braincert/new_sale.json")).await;
    }
    rx.wait_for(4).await;
    eventually_json(&app, &format!("/api/endpoints/{id}"), |v| {
        v["counters"]["succeeded"] == 4
    })
    .await;
    let ui = sign_in(&app, TOKEN).await;
    let page = text(&ui.get(&format!("/ui/endpoints/{id}")).await);
    assert!(page.contains("<svg"), "{page}");
    assert!(
        page.contains("succeeded: total 4 attempts"),
        "the hour holds the four: {page}"
    );
    // The minute is written as the relay's clock turns it; write it now
    // (at now, not later: a row dated past the page's last bucket would
    // not show).
    app.relay
        .history()
        .tick(hookrelay::store::now_ms())
        .await
        .unwrap();
    let TestApp { relay, dir, .. } = app;
    relay.shutdown().await.unwrap();
    let app = spawn_console(&route(), dir).await;
    let ui = sign_in(&app, TOKEN).await;
    let page = text(&ui.get(&format!("/ui/endpoints/{id}")).await);
    assert!(
        page.contains("succeeded: total 4 attempts"),
        "after a restart: {page}"
    );
}

#[tokio::test]
async fn the_buttons_filters_and_charts_the_readme_names() {
    let rx = Receiver::ok().await;
    let app = spawn_console(&route(), tempfile::tempdir().unwrap()).await;
    let ui = sign_in(&app, TOKEN).await;

    // Add endpoint with a pattern; the defaults show where nothing is set.
    let form_page = text(&ui.get("/ui/endpoints/new").await);
    assert!(
        form_page.contains("placeholder=\"2s\""),
        "the test config's timeout: {form_page}"
    );
    let r = ui
        .post(
            "/ui/endpoints",
            &[
                ("name", "Sales CRM"),
                ("url", &rx.url("/crm")),
                ("route", "braincert"),
                ("patterns", "purchase.*"),
                ("format", "json"),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let page_path = header(&r, "location");
    let id = page_path.rsplit('/').next().unwrap().to_string();
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["events"], json!(["purchase.*"]));
    let page = text(&ui.get(&page_path).await);
    assert!(page.contains("whsec_"), "the secret, once");
    assert!(
        !text(&ui.get(&page_path).await).contains("whsec_"),
        "and not again"
    );

    // The route filter.
    assert!(text(&ui.get("/ui/endpoints?route=braincert").await).contains("Sales CRM"));
    assert!(!text(&ui.get("/ui/endpoints?route=heights").await).contains("Sales CRM"));

    // Rotate secret: a new one, shown once, and two sign for a while.
    ui.post(&format!("/ui/endpoints/{id}/rotate"), &[]).await;
    let page = text(&ui.get(&page_path).await);
    assert!(
        page.contains("New signing secret made") && page.contains("whsec_"),
        "{page}"
    );
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["secrets"], 2);

    // Pause, then resume.
    ui.post(
        &format!("/ui/endpoints/{id}/enabled"),
        &[("enabled", "false")],
    )
    .await;
    ui.post(
        &format!("/ui/endpoints/{id}/enabled"),
        &[("enabled", "true")],
    )
    .await;
    let page = text(&ui.get(&page_path).await);
    assert!(
        page.contains("Resumed: queued events are delivered."),
        "{page}"
    );
    let e = admin(&app, "GET", &format!("/api/endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(e["enabled"], true);

    // The charts of an endpoint and of the overview, by their titles.
    for title in [
        "Delivery attempts per minute, last hour",
        "Delivery attempts per hour, last day",
        "Mean attempt duration per minute, last hour",
    ] {
        assert!(page.contains(title), "{title}");
    }
    let overview = text(&ui.get("/ui/").await);
    for title in [
        "Events per minute",
        "Delivery attempts per minute",
        "Queue depth",
        "Open circuits",
        "Store size",
    ] {
        assert!(
            overview.contains(&format!(">{title}<")),
            "{title} in {overview}"
        );
    }

    // The events page filters by outcome: a refused POST and an accepted one.
    assert_eq!(post_json(app.addr, "/nowhere", "{}").await.status, 404);
    assert_eq!(
        post_json(app.addr, "/braincert", fixture("braincert/new_sale.json"))
            .await
            .status,
        202
    );
    let rejected = text(&ui.get("/ui/events?outcome=rejected").await);
    assert!(
        rejected.contains("POST &#x2f;nowhere") && !rejected.contains("POST &#x2f;braincert"),
        "{rejected}"
    );
    let accepted = text(&ui.get("/ui/events?outcome=accepted").await);
    assert!(
        accepted.contains("POST &#x2f;braincert") && !accepted.contains("POST &#x2f;nowhere"),
        "{accepted}"
    );

    // Delete asks first, then deletes.
    let confirm = text(&ui.get(&format!("/ui/endpoints/{id}/delete")).await);
    assert!(confirm.contains("Delete this endpoint?"), "{confirm}");
    let r = ui.post(&format!("/ui/endpoints/{id}/delete"), &[]).await;
    assert_eq!(header(&r, "location"), "/ui/endpoints");
    assert!(text(&ui.get("/ui/endpoints").await).contains(&format!("Endpoint {id} deleted.")));
    let gone = admin(&app, "GET", &format!("/api/endpoints/{id}"), None).await;
    assert_eq!(gone.status, 404);
}
