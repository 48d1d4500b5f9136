//! The console in a real headless Chromium, as an LMS admin uses it: sign
//! in, add a BrainCert-style endpoint through the form (XML, basic auth),
//! press Send Test and see the receiver's answer, find it in the table with
//! its one call, replay a dead delivery, read an event whose payload holds
//! `<script>`, and look around with a read-only token. Every page is saved
//! as a screenshot under target/console-screenshots/.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::browser::Browser;
use common::*;
use fantoccini::Locator;
use serde_json::{json, Value};

const READER: &str = "reader-token-0123456789";

fn route() -> String {
    braincert_catalog_route()
}

/// The element's text, once it is there. A page that is replaced between
/// the find and the read (a navigation still going on) is read again.
async fn text_of(b: &Browser, css: &str) -> String {
    eventually_async(&format!("{css} to be readable"), async || {
        b.client
            .find(Locator::Css(css))
            .await
            .ok()?
            .text()
            .await
            .ok()
    })
    .await
}

/// Waits until the element's text holds `want`.
async fn wait_text(b: &Browser, css: &str, want: &str) -> String {
    eventually_async(&format!("{css} to say {want:?}"), async || {
        let t = b
            .client
            .find(Locator::Css(css))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.contains(want).then_some(t)
    })
    .await
}

async fn script_number(b: &Browser, js: &str) -> i64 {
    let v = b.client.execute(js, vec![]).await.unwrap();
    v.as_i64().unwrap_or_else(|| panic!("{js} gave {v}"))
}

/// A screenshot of the whole page: the window is made as tall as the page
/// first (WebDriver shoots the viewport), then put back.
async fn shoot(b: &Browser, name: &str) {
    let (w, h) = b.client.get_window_size().await.unwrap();
    let tall = script_number(b, "return document.documentElement.scrollHeight;").await;
    let tall = u32::try_from(tall).unwrap_or(900).clamp(600, 4000) + 120;
    b.client.set_window_size(w as u32, tall).await.unwrap();
    b.client
        .execute("window.scrollTo(0, 0);", vec![])
        .await
        .unwrap();
    b.screenshot(name).await;
    b.client.set_window_size(w as u32, h as u32).await.unwrap();
}

async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.client.goto(&format!("{base}/ui/")).await.unwrap();
    b.wait_for("#token").await.send_keys(token).await.unwrap();
    b.wait_for("button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("form.signout").await;
}

#[tokio::test]
async fn an_admin_manages_a_braincert_endpoint_in_the_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let crm = Receiver::ok().await;
    let up = Arc::new(AtomicBool::new(false));
    let flaky = Receiver::switchable(up.clone(), 500).await;
    let app = spawn_app_with_tokens(
        &route(),
        &format!("{TOKEN} admin name=admin\n{READER} read name=auditor\n"),
    )
    .await;
    let base = format!("http://{}", app.relay.admin_addrs()[0]);

    // A mailing tool that fails every new user, once each: it will hold a
    // dead letter, whose payload carries markup.
    let r = admin(
        &app,
        "POST",
        "/api/endpoints",
        Some(
            json!({"name": "Mailing list", "url": flaky.url("/users"), "route": "braincert",
                    "events": ["user.signup"], "retry": {"max_attempts": 1}}),
        ),
    )
    .await;
    assert_eq!(r.status, 201);
    let mailing = r.json()["id"].as_str().unwrap().to_string();
    let mut user: Value = serde_json::from_slice(&fixture("braincert/user_created.json")).unwrap();
    user["payload"]["note"] = json!("<script>window.pwned = 1</script>");
    let r = post_json(app.addr, "/braincert", user.to_string()).await;
    assert_eq!(r.status, 202);
    let event = r.json()["id"].as_str().unwrap().to_string();
    eventually_json(&app, "/api/deliveries?state=dead", |v| {
        v["deliveries"].as_array().unwrap().len() == 1
    })
    .await;

    // Sign in.
    b.client.goto(&format!("{base}/ui/")).await.unwrap();
    b.wait_for("#token").await;
    shoot(&b, "01-sign-in").await;
    b.wait_for("#token").await.send_keys(TOKEN).await.unwrap();
    b.wait_for("button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    // The sign-in page has an h1 too: wait for the next page's.
    wait_text(&b, "main h1", "Overview").await;
    b.wait_for(".chart svg").await;
    shoot(&b, "02-overview").await;

    // Add endpoint, through the form.
    b.wait_for("a[href='/ui/endpoints']")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("a[href='/ui/endpoints/new']")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("#name")
        .await
        .send_keys("BrainCert CRM")
        .await
        .unwrap();
    b.wait_for("#url")
        .await
        .send_keys(&crm.url("/crm"))
        .await
        .unwrap();
    b.wait_for("#route")
        .await
        .select_by_value("braincert")
        .await
        .unwrap();
    b.wait_for("input[name=event][value='purchase.completed']")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("#format-xml").await.click().await.unwrap();
    b.wait_for("#basic_auth").await.click().await.unwrap();
    b.wait_for("#username")
        .await
        .send_keys("crm-user")
        .await
        .unwrap();
    b.wait_for("#password")
        .await
        .send_keys("crm-pass")
        .await
        .unwrap();
    // The live preview renders the catalog's New Sale as the CRM gets it.
    wait_text(&b, "#preview", "<order_id>ORD_ep3FVWZ9lC</order_id>").await;
    shoot(&b, "03-endpoint-form").await;
    b.wait_for("#save").await.click().await.unwrap();

    // Its page: the secret once, then Send Test.
    let secret = b
        .wait_for("#new-secret")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    b.wait_for("#test-type")
        .await
        .select_by_value("purchase.completed")
        .await
        .unwrap();
    b.wait_for("#send-test").await.click().await.unwrap();
    assert_eq!(text_of(&b, ".test-status").await, "HTTP 200");
    assert_eq!(
        text_of(&b, ".test-result pre.excerpt").await,
        "ok",
        "the receiver's answer"
    );
    let got = crm.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].headers["content-type"]
        .to_str()
        .unwrap()
        .contains("xml"));
    let body = std::str::from_utf8(&got[0].body).unwrap();
    assert!(
        body.contains("<order_id>ORD_ep3FVWZ9lC</order_id>"),
        "{body}"
    );
    use base64::Engine;
    assert_eq!(
        got[0].headers["authorization"],
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("crm-user:crm-pass")
        )
    );
    assert!(verify_signature(&secret, &got[0].headers, &got[0].body));
    shoot(&b, "04-endpoint").await;

    // The table: its name and one call.
    b.client
        .goto(&format!("{base}/ui/endpoints"))
        .await
        .unwrap();
    b.wait_for("table.endpoints").await;
    let rows = b
        .client
        .find_all(Locator::Css("table.endpoints tbody tr"))
        .await
        .unwrap();
    let mut calls = None;
    for r in rows {
        if r.text().await.unwrap().contains("BrainCert CRM") {
            calls = Some(
                r.find(Locator::Css(".calls"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
        }
    }
    assert_eq!(calls.as_deref(), Some("1"), "BrainCert CRM has one call");
    assert!(text_of(&b, "table.endpoints").await.contains("New Sale"));
    // Times are shown in the browser's time zone by the console's script.
    let shown = text_of(&b, "table.endpoints time").await;
    assert!(!shown.contains("UTC"), "{shown}");
    shoot(&b, "05-endpoints").await;

    // Dead letters: Replay delivers it once more.
    b.wait_for("a[href='/ui/dead']")
        .await
        .click()
        .await
        .unwrap();
    assert!(text_of(&b, ".dead-group").await.contains("Mailing list"));
    shoot(&b, "06-dead-letters").await;
    up.store(true, Ordering::SeqCst);
    b.wait_for(".dead-group form button")
        .await
        .click()
        .await
        .unwrap();
    wait_text(&b, ".flash", "re-queued").await;
    let got = flaky.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    eventually_json(&app, "/api/deliveries?state=succeeded", |v| {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["target"] == mailing.as_str())
    })
    .await;

    // Events, and the event whose payload holds a script: text, not code.
    b.wait_for("a[href='/ui/events']")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("table.events").await;
    shoot(&b, "07-events").await;
    b.client
        .goto(&format!("{base}/ui/events/{event}"))
        .await
        .unwrap();
    let shown = text_of(&b, "#event-body").await;
    assert!(
        shown.contains("<script>window.pwned = 1</script>"),
        "{shown}"
    );
    assert_eq!(
        script_number(&b, "return document.scripts.length;").await,
        1
    );
    assert_eq!(
        script_number(&b, "return typeof window.pwned === 'undefined' ? 0 : 1;").await,
        0
    );
    shoot(&b, "08-event").await;

    // A read token: every page, and no form that changes anything.
    b.wait_for("form.signout button")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("#token").await;
    sign_in(&b, &base, READER).await;
    let ep = admin(&app, "GET", "/api/endpoints", None).await.json();
    let first = ep["endpoints"][0]["id"].as_str().unwrap().to_string();
    for path in [
        "/ui/".to_string(),
        "/ui/endpoints".into(),
        format!("/ui/endpoints/{first}"),
        "/ui/events".into(),
        format!("/ui/events/{event}"),
        "/ui/dead".into(),
    ] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        b.wait_for("form.signout").await;
        let n = script_number(
            &b,
            "return document.querySelectorAll('form[method=post]:not(.signout)').length;",
        )
        .await;
        assert_eq!(n, 0, "{path} has a form that changes something");
    }
    b.client
        .goto(&format!("{base}/ui/endpoints/{first}"))
        .await
        .unwrap();
    b.wait_for("h1").await;
    shoot(&b, "09-read-only-endpoint").await;

    // A phone's width.
    b.client.set_window_size(390, 844).await.unwrap();
    b.client
        .goto(&format!("{base}/ui/endpoints"))
        .await
        .unwrap();
    b.wait_for("table.endpoints").await;
    let overflow = script_number(
        &b,
        "return document.documentElement.scrollWidth - window.innerWidth;",
    )
    .await;
    assert!(
        overflow <= 0,
        "the page is {overflow} px wider than a phone"
    );
    shoot(&b, "10-endpoints-phone").await;
    b.close().await;
}
