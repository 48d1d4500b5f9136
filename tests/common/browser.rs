//! A headless Chromium driven over WebDriver (fantoccini), for the console's
//! tests: what a person sees and clicks, and screenshots to look at.
//!
//! Each `Browser` has its own chromedriver on a free loopback port and its
//! own fresh Chromium profile. chromedriver runs in a process group of its
//! own, and that whole group (chromedriver and the Chromium it started) is
//! killed when the `Browser` goes, by `close` or by a drop during a panic, so
//! no browser outlives its test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::DEADLINE;

/// Debian's paths; `CHROMIUM` and `CHROMEDRIVER` override them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How often `wait_for` and the start-up look again.
const POLL: Duration = Duration::from_millis(50);

/// The window every test sees, so screenshots compare.
const WINDOW: &str = "--window-size=1280,900";

pub struct Browser {
    pub client: Client,
    // Fields drop in order: the processes die before their profile goes.
    driver: Driver,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session.
    /// Missing binaries: panics when the `CI` env var is set (CI installs them), else returns None
    /// after printing why (eprintln) so a developer without Chromium can still run the rest.
    pub async fn start() -> Option<Browser> {
        let chromium = binary("CHROMIUM", CHROMIUM);
        let chromedriver = binary("CHROMEDRIVER", CHROMEDRIVER);
        for path in [&chromium, &chromedriver] {
            if !path.is_file() {
                let why = format!(
                    "{} is missing: install Debian's chromium and chromium-driver \
                     (or set CHROMIUM / CHROMEDRIVER)",
                    path.display()
                );
                if std::env::var_os("CI").is_some() {
                    panic!("{why}");
                }
                eprintln!("skipping the browser test: {why}");
                return None;
            }
        }

        let profile = tempfile::tempdir().expect("a temp dir for the Chromium profile");
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let mut driver = Driver::spawn(&chromedriver, port, &log);
        let url = format!("http://127.0.0.1:{port}");
        wait_until_ready(&url, &mut driver, &log).await;

        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    WINDOW,
                    format!("--user-data-dir={}", profile.path().join("chromium").display()),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session: {e}\nchromedriver log:\n{}",
                    tail(&log)
                )
            });
        Some(Browser {
            client,
            driver,
            profile,
        })
    }

    /// Saves a PNG screenshot to `<CARGO_TARGET_DIR or target>/console-screenshots/<name>.png` and returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Waits (with a deadline, polling, no fixed sleep) until an element matching the CSS selector exists; panics with the selector and the page's current URL on timeout.
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let error = match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                // Not there yet: look again. Any other error (a bad selector,
                // a dead session) will not go away by waiting.
                Err(e) if e.is_no_such_element() && Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => e,
            };
            let url = match self.client.current_url().await {
                Ok(url) => url.to_string(),
                Err(e) => format!("(unknown: {e})"),
            };
            panic!("no element matches {css:?} on {url} (waited up to {DEADLINE:?}): {error}");
        }
    }

    /// Ends the session and kills chromedriver (also on Drop for the process).
    pub async fn close(self) {
        let Browser {
            client,
            driver,
            profile,
        } = self;
        // A session that will not end is no reason to fail a test that
        // passed: the kill below ends it anyway.
        if let Err(e) = client.close().await {
            eprintln!("closing the Chromium session: {e}");
        }
        drop(driver);
        drop(profile);
    }
}

// === chromedriver ===

/// The chromedriver process; dropping it kills its whole process group.
struct Driver(Child);

impl Driver {
    fn spawn(path: &Path, port: u16, log: &Path) -> Driver {
        use std::os::unix::process::CommandExt as _;

        // With neither --allowed-ips nor --allowed-origins chromedriver takes
        // local connections only and listens on loopback only.
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so one kill reaches the Chromium it starts.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        Driver(child)
    }

    /// The exit status if chromedriver has already stopped.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The child is its group's leader, so its pid is the group id.
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until chromedriver's /status says it is ready, or panics with its log.
async fn wait_until_ready(url: &str, driver: &mut Driver, log: &Path) {
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(HttpConnector::new());
    let status: http::Uri = format!("{url}/status").parse().expect("a valid status URL");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(response) = http.get(status.clone()).await {
            if let Ok(body) = response.into_body().collect().await {
                let body: serde_json::Value =
                    serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
                if body["value"]["ready"] == serde_json::Value::Bool(true) {
                    return;
                }
            }
        }
        if let Some(status) = driver.exited() {
            panic!(
                "chromedriver exited ({status}) before it was ready:\n{}",
                tail(log)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "chromedriver not ready on {url} after {DEADLINE:?}:\n{}",
                tail(log)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A loopback port free a moment ago. Another process could take it before
/// chromedriver binds it; chromedriver then exits and the start-up says so.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("a bound address").port()
}

fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The end of chromedriver's log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
