//! The `hookrelay` command: parses the command line (`hookrelay::cli`) and
//! runs the library. Exit codes: 0 clean stop, 1 config or startup error,
//! 2 usage. Output goes through `print`, so a reader that goes away
//! (`check-config | head`) ends the output quietly instead of a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hookrelay::admin::client::{self, cell};
use hookrelay::cli::{
    Cli, Command, DeliveriesAction, EndpointSettings, EndpointsAction, EventsAction, HooksAction,
};
use hookrelay::config::Config;
use hookrelay::store::Backend;
use hookrelay::{service, Relay};
use serde_json::{json, Value};

/// Adds the settings given to `endpoints add|edit` to `body`, an object;
/// each given one becomes a key, the others are left out.
fn apply(settings: EndpointSettings, body: &mut Value) -> anyhow::Result<()> {
    let map = |pairs: Vec<(String, String)>| -> Value {
        Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect())
    };
    if !settings.events.is_empty() {
        body["events"] = json!(settings.events);
    }
    for (key, value) in [
        ("route", settings.route),
        ("description", settings.description),
        ("format", settings.format),
        ("content_type", settings.content_type),
        ("xml_root", settings.xml_root),
    ] {
        if let Some(v) = value {
            body[key] = json!(v);
        }
    }
    if let Some(path) = settings.template_file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--template-file {}", path.display()))?;
        body["template"] = json!(text);
    }
    if let Some((username, password)) = settings.basic_auth {
        body["basic_auth"] = json!({"username": username, "password": password});
    }
    if !settings.headers.is_empty() {
        body["headers"] = map(settings.headers);
    }
    if let Some(n) = settings.max_attempts {
        body["retry"]["max_attempts"] = json!(n);
    }
    if let Some(t) = settings.timeout {
        body["retry"]["timeout"] = json!(t);
    }
    if let Some(n) = settings.concurrency {
        body["concurrency"] = json!(n);
    }
    if let Some(n) = settings.rate_per_second {
        body["rate"]["per_second"] = json!(n);
    }
    if let Some(n) = settings.rate_burst {
        body["rate"]["burst"] = json!(n);
    }
    if !settings.metadata.is_empty() {
        body["metadata"] = map(settings.metadata);
    }
    Ok(())
}

/// The config file the command line names (`--config`, `HOOKRELAY_CONFIG`,
/// or the default, which must then exist).
fn config_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(hookrelay::cli::config_path(
        flag,
        std::env::var_os("HOOKRELAY_CONFIG"),
    )?)
}

/// Writes `text` to standard output. A reader that went away (`| head`)
/// ends the output, not the command: what the command did is done.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

/// jemalloc: memory freed after a drain or a purge goes back to the
/// system (docs/PERFORMANCE.md, Memory).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Migrate { config } => migrate(config),
        Command::Hooks { action, opts } => api(opts, Api::Hooks(action)),
        Command::Deliveries { action, opts } => api(opts, Api::Deliveries(action)),
        Command::Targets { opts } => api(opts, Api::Targets),
        Command::Endpoints { action, opts } => api(opts, Api::Endpoints(action)),
        Command::Events { action, opts } => api(opts, Api::Events(action)),
        Command::EventTypes { route, opts } => api(opts, Api::EventTypes { route }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once `serve` has set up logging, the error is a log line like
            // the others (JSON with log.format = "json", a priority under
            // systemd); before that, and for the CLI's commands, plain text.
            if tracing::dispatcher::has_been_set() {
                let e = hookrelay::telemetry::log::Escaped(format!("{e:#}"));
                tracing::error!(error = %e, "hookrelay stopped on an error");
            } else {
                eprintln!("hookrelay: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}

fn check_config(flag: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(flag)?;
    let config = Config::load(&path)?;
    let warnings: Vec<String> = match config.store.backend {
        Backend::Sled => hookrelay::store::sled::check_path(&config.store.path)?
            .into_iter()
            .collect(),
        Backend::Postgres => Vec::new(),
    };
    print(&hookrelay::cli::summary(&config, &path, &warnings))
}

fn migrate(flag: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(flag)?;
    let config = Config::load(&path)?;
    if config.store.backend != Backend::Postgres {
        anyhow::bail!(
            "{}: store.backend is \"sled\": the embedded store migrates itself when it opens; \
             `hookrelay migrate` is for store.backend = \"postgres\"",
            path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let pg = &config.store.postgres;
    let applied = runtime
        .block_on(hookrelay::store::postgres::schema::migrate(pg))
        .with_context(|| format!("cannot migrate {}", pg.location()))?;
    let mut out = String::new();
    for (version, name) in &applied {
        out.push_str(&format!("applied migration {version} ({name})\n"));
    }
    out.push_str(&format!(
        "{} is at schema version {}\n",
        pg.location(),
        hookrelay::store::postgres::schema::VERSION
    ));
    print(&out)
}

enum Api {
    Hooks(HooksAction),
    Deliveries(DeliveriesAction),
    Targets,
    Endpoints(Box<EndpointsAction>),
    Events(EventsAction),
    EventTypes { route: Option<String> },
}

/// One relay's admin API, called from this synchronous command.
struct Remote {
    admin: client::AdminClient,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, client::ClientError> {
        self.runtime.block_on(self.admin.call(method, path, body))
    }
}

/// A value percent-encoded for a URL path segment or query (config endpoint
/// ids hold a `/`).
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `?k=v&…` of the pairs that are given; empty when none is.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let given: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", enc(v.as_ref()?))))
        .collect();
    if given.is_empty() {
        String::new()
    } else {
        format!("?{}", given.join("&"))
    }
}

/// The words of a list command with its filters (`--route R`), to print
/// the command that fetches the next page.
fn list_command(base: &[&str], filters: &[(&str, Option<String>)]) -> Vec<String> {
    let mut words: Vec<String> = base.iter().map(ToString::to_string).collect();
    for (k, v) in filters {
        if let Some(v) = v {
            words.push(format!("--{k}"));
            words.push(v.clone());
        }
    }
    words
}

fn api(opts: hookrelay::cli::ApiOpts, what: Api) -> anyhow::Result<()> {
    let path = config_path(opts.config)?;
    let config = Config::load(&path)?;
    let remote = Remote {
        admin: client::AdminClient::from_config(&config)?,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
    };
    let (value, text) = match what {
        Api::Hooks(action) => hooks(&remote, action)?,
        Api::Deliveries(action) => deliveries(&remote, action)?,
        Api::Targets => {
            let v = remote.call("GET", "/api/targets", None)?;
            let t = client::targets_table(&v);
            (v, t)
        }
        Api::Endpoints(action) => endpoints(&remote, *action)?,
        Api::Events(action) => events(&remote, action)?,
        Api::EventTypes { route } => {
            let q = query(&[("route", route)]);
            let v = remote.call("GET", &format!("/api/event-types{q}"), None)?;
            let t = client::event_types_table(&v, hookrelay::store::now_ms());
            (v, t)
        }
    };
    if opts.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&value)?))
    } else {
        print(&text)
    }
}

fn hooks(remote: &Remote, action: HooksAction) -> anyhow::Result<(Value, String)> {
    Ok(match action {
        HooksAction::List => {
            let v = remote.call("GET", "/api/hooks", None)?;
            let t = client::hooks_table(&v);
            (v, t)
        }
        HooksAction::Add {
            url,
            event,
            route,
            secret,
        } => {
            let body = json!({"target_url": url, "event": event, "route": route, "secret": secret});
            let v = remote.call("POST", "/api/hooks", Some(body))?;
            let t = format!(
                "subscribed {} to {} for {}\nsecret (shown once): {}\n",
                cell(&v["id"]),
                cell(&v["target_url"]),
                cell(&v["event"]),
                cell(&v["secret"])
            );
            (v, t)
        }
        HooksAction::Rm { id } => {
            remote.call("DELETE", &format!("/api/hooks/{}", enc(&id)), None)?;
            (json!({"deleted": id}), format!("unsubscribed {id}\n"))
        }
        HooksAction::Test { id } => {
            let v = remote.call("POST", &format!("/api/hooks/{}/test", enc(&id)), None)?;
            let t = match v["status"].as_u64() {
                Some(s) => format!("{id}: {s} in {} ms\n", v["duration_ms"]),
                None => format!("{id}: {}\n", cell(&v["error"])),
            };
            (v, t)
        }
    })
}

fn deliveries(remote: &Remote, action: DeliveriesAction) -> anyhow::Result<(Value, String)> {
    Ok(match action {
        DeliveriesAction::List {
            state,
            target,
            limit,
            after,
        } => {
            let mut q = format!("limit={limit}");
            for (k, v) in [("state", state), ("target", target), ("after", after)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(&v)));
                }
            }
            let v = remote.call("GET", &format!("/api/deliveries?{q}"), None)?;
            let t = client::deliveries_table(&v);
            (v, t)
        }
        DeliveriesAction::Retry { id: Some(id), .. } => {
            let v = remote.call("POST", &format!("/api/deliveries/{}/retry", enc(&id)), None)?;
            (v, format!("re-queued {id}\n"))
        }
        DeliveriesAction::Retry {
            id: None,
            state,
            target,
        } => {
            let state = state.context("give a delivery id or --state (e.g. --state dead)")?;
            // No target means every target: the key is left out, since
            // the API refuses `"target": null`.
            let mut body = json!({"state": state});
            if let Some(target) = target {
                body["target"] = json!(target);
            }
            let v = remote.call("POST", "/api/deliveries/retry", Some(body))?;
            let t = format!("re-queued {} deliveries\n", cell(&v["retried"]));
            (v, t)
        }
    })
}

fn endpoints(remote: &Remote, action: EndpointsAction) -> anyhow::Result<(Value, String)> {
    let one = |id: &str| format!("/api/endpoints/{}", enc(id));
    Ok(match action {
        EndpointsAction::List {
            route,
            limit,
            after,
        } => {
            let filters = [("route", route), ("limit", limit.map(|n| n.to_string()))];
            let mut pairs = filters.to_vec();
            pairs.push(("after", after));
            let v = remote.call("GET", &format!("/api/endpoints{}", query(&pairs)), None)?;
            let mut t = client::endpoints_table(&v, hookrelay::store::now_ms());
            let command = list_command(&["hookrelay", "endpoints", "list"], &filters);
            t.push_str(&client::next_line(&v, &command));
            (v, t)
        }
        EndpointsAction::Show { id } => {
            let v = remote.call("GET", &one(&id), None)?;
            let t = client::endpoint_text(&v, hookrelay::store::now_ms());
            (v, t)
        }
        EndpointsAction::Add {
            name,
            url,
            settings,
            secret,
            disabled,
        } => {
            let mut body = json!({"name": name, "url": url});
            apply(settings, &mut body)?;
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            if disabled {
                body["enabled"] = json!(false);
            }
            let v = remote.call("POST", "/api/endpoints", Some(body))?;
            let t = format!(
                "added {}\nsecret (shown once): {}\n",
                cell(&v["id"]),
                cell(&v["secret"])
            );
            (v, t)
        }
        EndpointsAction::Edit {
            id,
            name,
            url,
            settings,
            enable,
            disable,
            patch,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(u) = url {
                body["url"] = json!(u);
            }
            apply(settings, &mut body)?;
            if enable || disable {
                body["enabled"] = json!(enable);
            }
            if let Some(p) = patch {
                let p: Value = serde_json::from_str(&p).context("--patch is not JSON")?;
                anyhow::ensure!(p.is_object(), "--patch must be a JSON object");
                client::merge(&mut body, p);
            }
            anyhow::ensure!(
                body.as_object().is_some_and(|m| !m.is_empty()),
                "nothing to change: give a setting, --enable, --disable or --patch"
            );
            let v = remote.call("PATCH", &one(&id), Some(body))?;
            (v, format!("updated {id}\n"))
        }
        EndpointsAction::Rm { id } => {
            remote.call("DELETE", &one(&id), None)?;
            (json!({"deleted": id}), format!("deleted {id}\n"))
        }
        EndpointsAction::Test {
            id,
            event_type,
            payload,
        } => {
            let mut body = json!({});
            if let Some(t) = event_type {
                body["event_type"] = json!(t);
            }
            if let Some(path) = payload {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("--payload {}", path.display()))?;
                body["payload"] = serde_json::from_str(&text)
                    .with_context(|| format!("--payload {}: not JSON", path.display()))?;
            }
            let v = remote.call("POST", &format!("{}/test", one(&id)), Some(body))?;
            let t = client::test_text(&id, &v);
            (v, t)
        }
        EndpointsAction::RotateSecret { id, grace } => {
            let body = match grace {
                Some(g) => json!({ "grace": g }),
                None => json!({}),
            };
            let v = remote.call("POST", &format!("{}/rotate-secret", one(&id)), Some(body))?;
            let old = match v["previous_expires_at"] {
                Value::Null => "the previous secret no longer signs".to_string(),
                ref at => format!(
                    "the previous secret also signs until {}",
                    client::timestamp(at)
                ),
            };
            let t = format!(
                "rotated {id}\nsecret (shown once): {}\n{old}\n",
                cell(&v["secret"])
            );
            (v, t)
        }
    })
}

fn events(remote: &Remote, action: EventsAction) -> anyhow::Result<(Value, String)> {
    Ok(match action {
        EventsAction::List {
            route,
            event_type,
            outcome,
            limit,
            after,
        } => {
            let filters = [
                ("route", route),
                ("type", event_type),
                ("outcome", outcome),
                ("limit", limit.map(|n| n.to_string())),
            ];
            let mut pairs = filters.to_vec();
            pairs.push(("after", after));
            let v = remote.call("GET", &format!("/api/events{}", query(&pairs)), None)?;
            let mut t = client::events_table(&v);
            let command = list_command(&["hookrelay", "events", "list"], &filters);
            t.push_str(&client::next_line(&v, &command));
            (v, t)
        }
        EventsAction::Show { id } => {
            let v = remote.call("GET", &format!("/api/events/{}", enc(&id)), None)?;
            let t = client::event_text(&v);
            (v, t)
        }
    })
}

fn serve(flag: Option<PathBuf>) -> anyhow::Result<()> {
    // The store holds secrets and bodies: what serve creates is private
    // to its user, as systemd's UMask=0077 makes it under the unit.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let path = config_path(flag)?;
    let config = Config::load(&path)?;
    hookrelay::telemetry::log::init_logging(&config.log)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;

        let relay = Relay::start(config).await?;
        service::notify_ready();
        tracing::info!(config = %path.display(), "hookrelay ready");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&relay, &path).await,
            }
        }
        service::notify_stopping();
        tracing::info!("stopping");
        relay.shutdown().await.context("final flush failed")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Re-reads the config file; a bad one is logged and the running one kept.
async fn reload(relay: &Relay, path: &std::path::Path) {
    service::notify_reloading(false);
    match Config::load(path) {
        Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
        Ok(config) => match relay.reload(config).await {
            Ok(restart_only) => {
                for key in restart_only {
                    tracing::warn!(key, "changed, but takes effect only after a restart");
                }
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running configuration stays")
            }
        },
    }
    service::notify_reloading(true);
}
