//! The `hookrelay` command as an operator uses it: check-config, serve,
//! exit codes, and a clean stop on SIGTERM.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

fn shipped_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml")
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(shipped_config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok") && text.contains("route heights"),
        "{text}"
    );
}

#[test]
fn bad_config_names_file_key_and_reason_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let cases = [
        ("[delivery]\nmax_attempts = \"ten\"\n", "delivery.max_attempts", "invalid type"),
        (
            "[[routes]]\nname = \"r\"\npath = \"/r\"\n[[routes.targets]]\nname = \"t\"\nurl = \"http://x\"\nsecret = \"hunter2\"\n",
            "routes[0].targets[0].secret",
            "whsec_",
        ),
        ("[ingest]\nlisten = [\"nowhere\"]\n", "ingest.listen", "address"),
    ];
    for (text, key, reason) in cases {
        std::fs::write(&path, text).unwrap();
        for sub in ["check-config", "serve"] {
            let out = Command::new(BIN)
                .args([sub, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{sub} {text}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("bad.toml"), "{err}");
            assert!(err.contains(key), "{err}");
            assert!(err.contains(reason), "{err}");
            assert!(!err.contains("hunter2"), "secrets never printed: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/hookrelay.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/hookrelay.toml"));
}

#[test]
fn config_path_comes_from_the_environment() {
    let out = Command::new(BIN)
        .arg("check-config")
        .env("HOOKRELAY_CONFIG", shipped_config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn serve_accepts_events_and_stops_cleanly_on_sigterm() {
    let rx = common::Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = common::test_config_text(&common::one_route(&rx.url("/hook"), ""), dir.path())
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < common::DEADLINE, "relay never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = common::post_json(addr, "/t/new_order", "{}").await;
    assert_eq!(r.status, 202);
    rx.wait_for(1).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = common::wait_exit(&mut child).await;
    let mut log = String::new();
    let mut out = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    log.push_str(&out);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// Runs the binary with `args` against `config`; returns (exit code, stdout, stderr).
async fn run_cli(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operator_commands_drive_the_admin_api() {
    let rx = common::Receiver::ok().await;
    let app = common::spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    // The operator's config names the running relay's admin address and tokens.
    let cli_config = app.dir.path().join("cli.toml");
    std::fs::write(
        &cli_config,
        format!(
            "admin.listen = [\"{}\"]\nadmin.tokens_file = \"admin.tokens\"\n",
            app.relay.admin_addrs()[0]
        ),
    )
    .unwrap();

    let (code, out, err) = run_cli(
        &cli_config,
        &[
            "hooks",
            "add",
            "--url",
            &rx.url("/crm"),
            "--event",
            "new_order",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .expect("secret printed")
        .to_string();
    let (_, out, _) = run_cli(&cli_config, &["hooks", "list", "--json"]).await;
    let hooks: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = hooks["hooks"][0]["id"].as_str().unwrap().to_string();
    let (_, table, _) = run_cli(&cli_config, &["hooks", "list"]).await;
    assert!(table.starts_with("ID") && table.contains(&id), "{table}");

    let r = common::post_json(app.addr, "/t/new_order", "{\"n\":1}").await;
    assert_eq!(r.status, 202);
    let got = rx.wait_for(1).await;
    assert!(common::verify_signature(
        &secret,
        &got[0].headers,
        &got[0].body
    ));

    let (code, out, _) = run_cli(&cli_config, &["deliveries", "list", "--target", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.starts_with("DELIVERY") && out.contains(&id), "{out}");
    let (code, out, _) = run_cli(&cli_config, &["deliveries", "retry", "--state", "dead"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "re-queued 0 deliveries");
    let (code, out, _) = run_cli(&cli_config, &["targets"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&id));

    let (code, out, _) = run_cli(&cli_config, &["hooks", "test", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.starts_with(&format!("{id}: 200 in ")), "{out}");
    rx.wait_for(2).await;

    let (code, out, _) = run_cli(&cli_config, &["hooks", "rm", &id]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("unsubscribed {id}"));
    let (code, _, err) = run_cli(&cli_config, &["hooks", "rm", &id]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");

    // A wrong token is reported, not a crash.
    std::fs::write(app.dir.path().join("admin.tokens"), "not-the-token\n").unwrap();
    let (code, _, err) = run_cli(&cli_config, &["hooks", "list"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
}

#[tokio::test]
async fn admin_token_from_a_systemd_credential() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("admin.tokens"), "from-credential\n").unwrap();
    let ingest = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &path,
        format!(
            "ingest.listen = [\"{ingest}\"]\nadmin.listen = [\"{admin}\"]\n\
             admin.tokens_file = \"admin.tokens\"\nstore.path = {:?}\n",
            dir.path().join("store").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        if start.elapsed() > common::DEADLINE {
            let _ = child.kill();
            panic!("admin never listened");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let call = |token: &'static str| async move {
        let auth = format!("Bearer {token}");
        common::send(
            admin,
            None,
            "GET",
            "/api/hooks",
            &[("authorization", &auth)],
            "",
        )
        .await
    };
    let ok = call("from-credential").await.status;
    let refused = call("test-admin-token").await.status;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ok, 200);
    assert_eq!(refused, 401);
}

#[test]
fn check_config_accepts_every_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    for (file, route) in [
        ("heights.toml", "route heights"),
        ("braincert.toml", "route braincert"),
        ("live-events.toml", "route live-events"),
    ] {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(dir.join(file))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("ok") && text.contains(route), "{text}");
        // A warning names the placeholder a key still holds, never a value.
        for value in ["Bearer change-me", "= \"change-me", "whsec_MfKQ"] {
            assert!(!text.contains(value), "secrets never printed: {text}");
        }
    }
}

#[test]
fn env_values_come_from_the_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"r\"\npath = \"/r\"\n[[routes.targets]]\nname = \"t\"\n\
         url = \"https://crm.example.com/hook\"\nheaders = { x-api-key = \"env:HOOKRELAY_TEST_API_KEY\" }\n",
    )
    .unwrap();
    let run = |value: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check-config", "--config"])
            .arg(&path)
            .env_remove("HOOKRELAY_TEST_API_KEY");
        if let Some(v) = value {
            cmd.env("HOOKRELAY_TEST_API_KEY", v);
        }
        cmd.output().unwrap()
    };
    let out = run(Some("key-value-1234"));
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("headers  x-api-key"), "{text}");
    assert!(!text.contains("key-value-1234"), "{text}");

    let out = run(None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].targets[0].headers.x-api-key")
            && err.contains("HOOKRELAY_TEST_API_KEY is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn sighup_reloads_tls_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let text = common::test_config_text(
        &format!(
            "ingest.tls = {{ cert = {:?}, key = {:?} }}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        dir.path(),
    )
    .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log, read as it comes.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let logged = |what: &'static str| {
        let log = log.clone();
        common::eventually(what, move || {
            log.lock().unwrap().contains(what).then_some(())
        })
    };
    logged("hookrelay ready").await;
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    // A broken certificate file: the reload is refused and logged, the old
    // certificate kept, and the relay goes on serving.
    std::fs::write(&cert_path, "garbage").unwrap();
    signal("-HUP");
    logged("reload refused").await;
    std::fs::write(&cert_path, cert.pem()).unwrap();
    signal("-HUP");
    logged("TLS certificates reloaded").await;
    signal("-TERM");
    let code = common::wait_exit(&mut child).await;
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// Writes the operator's config for a running test relay: its admin address
/// and the tokens file `spawn_app` wrote.
fn cli_config(app: &common::TestApp) -> std::path::PathBuf {
    let path = app.dir.path().join("cli.toml");
    std::fs::write(
        &path,
        format!(
            "admin.listen = [\"{}\"]\nadmin.tokens_file = \"admin.tokens\"\n",
            app.relay.admin_addrs()[0]
        ),
    )
    .unwrap();
    path
}

/// Adds an endpoint through the CLI; returns its id from the `--json` answer.
async fn add_endpoint(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["endpoints", "add", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(config, &all).await;
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["id"].as_str().expect("an id").to_string()
}

#[tokio::test]
async fn endpoints_add_then_list_and_show_the_name_as_given() {
    let rx = common::Receiver::ok().await;
    let app = common::spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    let config = cli_config(&app);
    let name = "Nouvelle vente → CRM";

    let (code, out, err) = run_cli(
        &config,
        &[
            "endpoints",
            "add",
            "--name",
            name,
            "--url",
            &rx.url("/crm"),
            "--event",
            "new_order",
            "--event",
            "refund",
            "--route",
            "t",
            "--header",
            "X-Api-Key: key-value-1234",
            "--metadata",
            "team=sales",
            "--max-attempts",
            "3",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("added "))
        .expect("id printed")
        .to_string();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .expect("secret printed");
    assert!(secret.starts_with("whsec_"), "{out}");

    let (code, table, err) = run_cli(&config, &["endpoints", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(table.starts_with("ID"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} in\n{table}"));
    assert!(
        row.contains(name) && row.contains("new_order,refund"),
        "{row}"
    );
    assert!(row.ends_with("yes"), "{row}");

    let (code, text, err) = run_cli(&config, &["endpoints", "show", &id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains(name) && text.contains("x-api-key"), "{text}");
    assert!(text.contains("team=sales"), "{text}");
    assert!(
        !text.contains("key-value-1234") && !text.contains(secret),
        "{text}"
    );

    // Paused and renamed through `edit`; the list shows it.
    let (code, _, err) = run_cli(
        &config,
        &["endpoints", "edit", &id, "--disable", "--name", "Ventes 2"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (_, table, _) = run_cli(&config, &["endpoints", "list", "--route", "t"]).await;
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains("Ventes 2") && row.ends_with("no"), "{table}");

    let (code, out, err) = run_cli(&config, &["endpoints", "rm", &id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("deleted {id}"));
    let (code, _, err) = run_cli(&config, &["endpoints", "show", &id]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn endpoints_test_prints_the_receivers_status() {
    let rx = common::Receiver::ok().await;
    let app = common::spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    let config = cli_config(&app);
    let id = add_endpoint(
        &config,
        &[
            "--name",
            "test target",
            "--url",
            &rx.url("/crm"),
            "--event",
            "new_order",
        ],
    )
    .await;
    let payload = app.dir.path().join("payload.json");
    std::fs::write(&payload, "{\"order\": 42}").unwrap();

    let p = payload.display().to_string();
    let (code, out, err) = run_cli(
        &config,
        &[
            "endpoints",
            "test",
            &id,
            "--event-type",
            "new_order",
            "--payload",
            &p,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("{id}: 200 in ")), "{out}");
    let got = rx.wait_for(1).await;
    assert!(
        String::from_utf8_lossy(&got[0].body).contains("42"),
        "{:?}",
        got[0].body
    );

    let (_, text, _) = run_cli(&config, &["endpoints", "show", &id]).await;
    assert!(
        text.contains("recent tests:\n") && text.contains("200 in "),
        "{text}"
    );
}

#[tokio::test]
async fn events_list_shows_a_rejected_404() {
    let app = common::spawn_app("[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n").await;
    let config = cli_config(&app);
    let r = common::post_json(app.addr, "/nowhere", "{}").await;
    assert_eq!(r.status, 404);
    let r = common::post_json(app.addr, "/t/new_order", "{\"n\":1}").await;
    assert_eq!(r.status, 202);
    let evt = r.json()["id"].as_str().unwrap().to_string();

    let table = common::eventually_async("both requests in the inbound log", async || {
        let (code, out, _) = run_cli(&config, &["events", "list"]).await;
        (code == Some(0) && out.lines().count() >= 3).then_some(out)
    })
    .await;
    assert!(table.starts_with("AT"), "{table}");
    let rejected = table
        .lines()
        .find(|l| l.contains("rejected 404"))
        .unwrap_or_else(|| panic!("a rejected 404 in\n{table}"));
    assert!(rejected.contains("127.0.0.1"), "{rejected}");
    let accepted = table.lines().find(|l| l.contains("accepted")).unwrap();
    assert!(
        accepted.contains("new_order") && accepted.ends_with(&evt),
        "{table}"
    );

    let (code, only, err) = run_cli(&config, &["events", "list", "--outcome", "rejected"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        only.contains("rejected 404") && !only.contains("accepted"),
        "{only}"
    );

    let (code, shown, err) = run_cli(&config, &["events", "show", &evt]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        shown.contains(&evt) && shown.contains("new_order"),
        "{shown}"
    );
    assert!(shown.contains("\"n\": 1"), "the body, indented: {shown}");
}

#[tokio::test]
async fn event_types_lists_a_type_declared_in_the_config() {
    let app = common::spawn_app(
        "[[routes]]\nname = \"t\"\npath = \"/t/{event}\"\n\
         [[routes.event_types]]\nname = \"new_order\"\ndisplay_name = \"New Order\"\ncategory = \"Sales\"\n",
    )
    .await;
    let config = cli_config(&app);
    // A type no catalog declares shows up once seen.
    let r = common::post_json(app.addr, "/t/surprise", "{}").await;
    assert_eq!(r.status, 202);

    let table = common::eventually_async("the seen type listed", async || {
        let (code, out, _) = run_cli(&config, &["event-types"]).await;
        (code == Some(0) && out.contains("surprise")).then_some(out)
    })
    .await;
    assert!(table.starts_with("ROUTE"), "{table}");
    let declared = table
        .lines()
        .find(|l| l.contains("new_order"))
        .unwrap_or_else(|| panic!("new_order in\n{table}"));
    assert!(
        declared.starts_with("t ") && declared.contains("New Order"),
        "{table}"
    );
    assert!(declared.contains("Sales"), "{table}");
    let seen = table.lines().find(|l| l.contains("surprise")).unwrap();
    assert!(
        seen.contains("(undeclared)") && seen.ends_with(" ago"),
        "{table}"
    );

    let (code, out, err) = run_cli(&config, &["event-types", "--route", "t", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["event_types"].as_array().unwrap().len() >= 2, "{out}");
}

#[tokio::test]
async fn config_has_a_short_flag_everywhere() {
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(shipped_config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = common::spawn_app("").await;
    let config = cli_config(&app);
    for args in [["hooks", "list"], ["endpoints", "list"]] {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("-c").arg(&config);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ID"));
    }
}

#[tokio::test]
async fn a_config_target_is_test_sent_by_its_id_and_an_api_secret_rotates() {
    let rx = common::Receiver::ok().await;
    let app = common::spawn_app(&common::one_route(&rx.url("/crm"), "")).await;
    let config = cli_config(&app);

    // A config target's id has a '/': the CLI sends it percent-encoded.
    let (code, out, err) = run_cli(&config, &["endpoints", "test", "t/rx"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("t/rx: 200 in "), "{out}");
    let got = rx.wait_for(1).await;
    assert!(common::verify_signature(
        common::SECRET,
        &got[0].headers,
        &got[0].body
    ));

    let id = add_endpoint(
        &config,
        &[
            "--name",
            "rotating",
            "--url",
            &rx.url("/api"),
            "--event",
            "*",
        ],
    )
    .await;
    let (code, out, err) = run_cli(
        &config,
        &["endpoints", "rotate-secret", &id, "--grace", "1h"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .expect("new secret printed")
        .to_string();
    assert!(secret.starts_with("whsec_"), "{out}");
    let (_, shown, _) = run_cli(&config, &["endpoints", "show", &id, "--json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["secrets"], 2, "old and new sign during the grace");
    assert!(!shown.to_string().contains(&secret));
}

/// Runs the binary with `args` and no config from the environment; returns
/// (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("HOOKRELAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(config: &Path) -> (Option<i32>, String, String) {
    run(&["check-config".as_ref(), "-c".as_ref(), config.as_os_str()])
}

#[test]
fn check_config_summarises_routes_targets_and_their_retry_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &path,
        format!(
            "store.path = {:?}\n\
             [delivery]\nmax_attempts = 4\nbackoff = {{ initial = \"30s\", multiplier = 3.0 }}\n\
             [[routes]]\nname = \"lms\"\npath = \"/lms/{{event}}\"\ndedup = \"{{header.idempotency-key}}\"\n\
             [[routes.targets]]\nname = \"crm\"\nurl = \"https://crm.example.com/hook\"\n\
             events = [\"course_*\", \"new_order\"]\nheaders = {{ x-api-key = \"key-value-1234\" }}\n\
             [[routes.targets]]\nname = \"chat\"\nurl = \"https://chat.example.com/in\"\n\
             max_attempts = 1\nformat = \"xml\"\n\
             [[routes]]\nname = \"vendor\"\npath = \"/vendor\"\nevent = \"{{json./type|unknown}}\"\n",
            dir.path().join("store")
        ),
    )
    .unwrap();
    let (code, out, err) = check(&path);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    for want in [
        "  store    ",
        "  route lms: POST /lms/{event}",
        "    event type  the path segment {event}",
        "    dedup on    the header idempotency-key",
        "    target crm -> https://crm.example.com/hook",
        "      events   course_*, new_order",
        "      body     original",
        // [delivery]'s policy: waits 30s, 1m30s, 4m30s; its jitter (0.2) stays.
        "      retries  4 attempts over ~6m 30s (waits 30s, 1m 30s, 4m 30s) + jitter ±20%",
        "      headers  x-api-key",
        "      body     xml, root <event>",
        "      retries  1 attempt, no retry",
        "  route vendor: POST /vendor",
        "    event type  the JSON body at /type (\"unknown\" when it has none)",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    assert!(
        !out.contains("key-value-1234"),
        "header values stay hidden:\n{out}"
    );
    for debug in ["Some(", "Prefix(", "Exact(", "Literal("] {
        assert!(!out.contains(debug), "{debug} in:\n{out}");
    }
}

#[test]
fn check_config_spells_out_the_live_events_schedule_and_warns_about_placeholders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let (code, out, err) = check(&dir.join("live-events.toml"));
    assert_eq!(code, Some(0), "{err}");
    let hr = out.split("target hr").nth(1).expect("target hr");
    assert!(
        hr.contains("11 attempts over ~3h 25m (waits 20s, 40s, 1m 20s, 2m 40s, 5m 20s, 10m 40s, 21m 20s, 42m 40s, 1h, 1h) + jitter ±20%"),
        "{out}"
    );
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert!(
        warnings.contains(
            &"warning: routes[0].targets[1].headers.x-api-key: still the placeholder `change-me`"
        ),
        "{out}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("warning: routes[0].targets[0].secret: the example secret")),
        "{out}"
    );
    assert!(!out.contains("whsec_MfKQ"), "{out}");
}

/// A config with its listeners on ports `i` and `a` and its store at `store`.
fn on_ports_with_store(i: u16, a: u16, store: &Path) -> String {
    format!(
        "ingest.listen = [\"127.0.0.1:{i}\"]\nadmin.listen = [\"127.0.0.1:{a}\"]\n\
         store.path = {store:?}\n"
    )
}

#[tokio::test]
async fn a_store_locked_by_a_running_relay_is_said_in_one_line() {
    let mut relay = common::binary::Binary::new();
    let store = relay.dir().join("store");
    let config = |i: u16, a: u16| on_ports_with_store(i, a, &store);
    relay.start(&config).await;
    let second = relay.dir().join("second.toml");
    let (i, a) = (common::binary::free_port(), common::binary::free_port());
    std::fs::write(&second, config(i, a)).unwrap();
    let locked = format!(
        "store {} is locked by another hookrelay process (pid {})",
        store.display(),
        relay.pid()
    );
    // `serve` has set up logging when it finds the lock, so the error is
    // its last log line.
    let want = format!("hookrelay stopped on an error error={locked}\n");

    // check-config, as before a reload of the running relay: a warning.
    let (code, out, err) = check(&second);
    assert_eq!(code, Some(0), "{err}");
    let warning = out
        .lines()
        .find(|l| l.starts_with("warning: store "))
        .unwrap_or_else(|| panic!("no store warning in:\n{out}"));
    assert!(
        warning.starts_with(&format!("warning: {locked}: ")),
        "{warning}"
    );

    let second = second.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(&["serve".as_ref(), "--config".as_ref(), second.as_os_str()])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.ends_with(&want), "{err}");
    assert_eq!(err.matches("locked").count(), 1, "{err}");
    relay.terminate().await;

    // Stopped, it is free again.
    let (code, out, err) = check(&relay.dir().join("second.toml"));
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("locked"), "{out}");
}

#[test]
fn a_store_path_that_cannot_be_a_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    for store in [dir.path().join("file"), dir.path().join("file/store")] {
        let path = dir.path().join("hookrelay.toml");
        std::fs::write(&path, format!("store.path = {store:?}\n")).unwrap();
        let (code, _, err) = check(&path);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("is not a directory"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[tokio::test]
async fn a_port_in_use_is_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &path,
        format!(
            "ingest.listen = [\"127.0.0.1:{port}\"]\nadmin.listen = []\nstore.path = {:?}\n",
            dir.path().join("store")
        ),
    )
    .unwrap();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(&["serve".as_ref(), "-c".as_ref(), path.as_os_str()])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    // The last log line, with the cause once.
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(&format!(
            " ERROR hookrelay: hookrelay stopped on an error \
             error=cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[test]
fn without_a_config_the_error_says_where_it_looked_and_how_to_name_one() {
    // The default file exists on a host where hookrelay is installed.
    if Path::new(hookrelay::cli::DEFAULT_CONFIG).exists() {
        eprintln!("skipping: {} exists here", hookrelay::cli::DEFAULT_CONFIG);
        return;
    }
    for sub in ["check-config", "serve", "targets"] {
        let (code, _, err) = run(&[sub.as_ref()]);
        assert_eq!(code, Some(1), "{sub}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        for want in [
            "/etc/hookrelay/hookrelay.toml",
            "--config PATH",
            "-c",
            "HOOKRELAY_CONFIG",
        ] {
            assert!(err.contains(want), "{sub}: no {want} in {err}");
        }
    }
    let out = Command::new(BIN)
        .arg("check-config")
        .env("HOOKRELAY_CONFIG", "/nonexistent/hr.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HOOKRELAY_CONFIG names /nonexistent/hr.toml"),
        "{err}"
    );
}

#[test]
fn every_subcommand_that_takes_a_config_takes_c() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, at: String, found: &mut Vec<String>) {
        if let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == "config") {
            assert_eq!(arg.get_short(), Some('c'), "{at}: --config has no -c");
            found.push(at.clone());
        }
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{at} {}", sub.get_name()), found);
        }
    }
    let mut found = Vec::new();
    walk(
        &hookrelay::cli::Cli::command(),
        "hookrelay".into(),
        &mut found,
    );
    for sub in [
        "serve",
        "check-config",
        "hooks",
        "deliveries",
        "targets",
        "endpoints",
        "events",
        "event-types",
    ] {
        assert!(
            found.contains(&format!("hookrelay {sub}")),
            "{sub} takes no --config: {found:?}"
        );
    }
}

/// Runs the binary with its standard output a pipe nobody reads any more,
/// as `hookrelay ... | head` leaves it once head has exited.
fn run_into_closed_pipe(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(args)
        .env_remove("HOOKRELAY_CONFIG")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_closed_standard_output_ends_the_output_without_a_panic() {
    let shipped = shipped_config();
    let (code, err) =
        run_into_closed_pipe(&["check-config".as_ref(), "-c".as_ref(), shipped.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    let (code, err) = run_into_closed_pipe(&["--help".as_ref()]);
    assert!(!err.contains("panicked"), "{code:?} {err}");

    let app = common::spawn_app("").await;
    let config = cli_config(&app);
    for args in [
        &["hooks", "list"][..],
        &["targets"],
        &["endpoints", "list", "--json"],
    ] {
        let mut argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        argv.push("-c".as_ref());
        argv.push(config.as_os_str());
        let argv: Vec<std::ffi::OsString> = argv.iter().map(|a| a.to_os_string()).collect();
        let (code, err) = tokio::task::spawn_blocking(move || {
            let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
            run_into_closed_pipe(&argv)
        })
        .await
        .unwrap();
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn the_store_is_private_to_the_relay_user() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut relay = common::binary::Binary::new();
    let store = relay.dir().join("data/db");
    let config = |i: u16, a: u16| on_ports_with_store(i, a, &store);
    // Whatever umask it was started with (this test's is usually 022).
    relay.start(&config).await;
    relay.wait_ready().await;
    let files = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    assert_eq!(mode(&store), 0o700);
    let made = files(&store);
    assert!(made.iter().any(|f| f.ends_with("db")), "{made:?}");
    for f in &made {
        let want = if f.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(f), want, "{}", f.display());
    }
    relay.terminate().await;

    // A store left readable by others (copied, or from an older hookrelay)
    // is made private at the next start, and the log says so.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in &made {
        let loose = if f.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(loose)).unwrap();
    }
    relay.start(&config).await;
    relay.wait_ready().await;
    assert_eq!(mode(&store), 0o700);
    for f in files(&store) {
        let want = if f.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&f), want, "{}", f.display());
    }
    assert!(relay.log().contains("made private"), "{}", relay.log());
    relay.terminate().await;
}

#[test]
fn the_man_pages_are_rendered_from_the_command_line() {
    use clap::CommandFactory;
    let rendered = tempfile::tempdir().unwrap();
    clap_mangen::generate_to(hookrelay::cli::Cli::command(), rendered.path()).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/man");
    let pages = |dir: &Path| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let now = pages(rendered.path());
    if std::env::var_os("HOOKRELAY_WRITE_MAN").is_some() {
        let _ = std::fs::remove_dir_all(&shipped);
        std::fs::create_dir_all(&shipped).unwrap();
        for (name, text) in &now {
            std::fs::write(shipped.join(name), text).unwrap();
        }
    }
    let names: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"hookrelay.1") && names.contains(&"hookrelay-check-config.1"),
        "{names:?}"
    );
    assert!(
        pages(&shipped) == now,
        "packaging/man is not the current command line; write it again with \
         HOOKRELAY_WRITE_MAN=1 cargo test --test cli the_man_pages"
    );
}
