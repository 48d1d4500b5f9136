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
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
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
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > common::DEADLINE {
            let _ = child.kill();
            panic!("relay did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
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
    // A broken certificate file: logged, old certificate kept, still serving.
    std::fs::write(&cert_path, "garbage").unwrap();
    signal("-HUP");
    logged("TLS reload failed").await;
    std::fs::write(&cert_path, cert.pem()).unwrap();
    signal("-HUP");
    logged("TLS certificates reloaded").await;
    signal("-TERM");
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > common::DEADLINE {
            let _ = child.kill();
            panic!("relay did not stop");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}
