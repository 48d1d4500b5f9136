//! The `hookrelay` command: parses the command line and runs the library.
//! Exit codes: 0 clean stop, 1 config or startup error, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookrelay::admin::client::{self, cell};
use hookrelay::config::Config;
use hookrelay::deliver::shape::Body;
use hookrelay::{service, Relay};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "A durable webhook relay for learning platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Config file [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/hookrelay.toml]
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
    },
    /// Validate the config file and print a summary.
    CheckConfig {
        /// Config file [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/hookrelay.toml]
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
    },
    /// REST Hooks subscriptions, through the admin API.
    Hooks {
        #[command(subcommand)]
        action: HooksAction,
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// The delivery log and repair, through the admin API.
    Deliveries {
        #[command(subcommand)]
        action: DeliveriesAction,
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// Every target with its counters and circuit, through the admin API.
    Targets {
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// Every receiver, from the config file or made through the API.
    Endpoints {
        // Boxed: `endpoints add|edit` carry every setting flag.
        #[command(subcommand)]
        action: Box<EndpointsAction>,
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// The inbound log and the stored events, through the admin API.
    Events {
        #[command(subcommand)]
        action: EventsAction,
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// The event types each route declares or has seen.
    EventTypes {
        /// Only this route's.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        opts: ApiOpts,
    },
}

/// Where the admin API is, and how to print its answers.
#[derive(clap::Args)]
struct ApiOpts {
    /// Config file naming the admin address and tokens file
    /// [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/hookrelay.toml]
    #[arg(short = 'c', long, global = true, display_order = 100)]
    config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true, display_order = 100)]
    json: bool,
}

#[derive(Subcommand)]
enum HooksAction {
    /// List subscriptions with their counters.
    List,
    /// Subscribe a URL to an event type (`*` for all). Prints the secret once.
    Add {
        #[arg(long)]
        url: String,
        #[arg(long)]
        event: String,
        /// Only events of this route.
        #[arg(long)]
        route: Option<String>,
        /// A whsec_ secret; generated when absent.
        #[arg(long)]
        secret: Option<String>,
    },
    /// Unsubscribe; deliveries still queued for it are cancelled.
    Rm { id: String },
    /// Send a signed test event to the hook now.
    Test { id: String },
}

#[derive(Subcommand)]
enum DeliveriesAction {
    /// List deliveries, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after this delivery id (from a previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Re-queue one delivery by id, or all in a state (`--state dead`).
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        state: Option<String>,
        #[arg(long, requires = "state")]
        target: Option<String>,
    },
}

#[derive(Subcommand)]
enum EndpointsAction {
    /// List endpoints: the config file's first, then the API's by id.
    List {
        /// Only this route's.
        #[arg(long)]
        route: Option<String>,
        /// At most this many [default: 100].
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after this endpoint id (from a previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One endpoint's settings, counters and recent tests.
    Show { id: String },
    /// Make an endpoint. Prints its id, and its secret once.
    Add {
        /// Free text, 1-100 characters, spaces and any language allowed.
        #[arg(long)]
        name: String,
        #[arg(long)]
        url: String,
        #[command(flatten)]
        settings: EndpointSettings,
        /// A whsec_ secret; generated when absent.
        #[arg(long)]
        secret: Option<String>,
        /// Make it paused: events queue for it, nothing is sent.
        #[arg(long)]
        disabled: bool,
    },
    /// Change an endpoint made through the API; only what is given changes.
    Edit {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        settings: EndpointSettings,
        /// Resume sending.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Pause: events queue for it, nothing is sent until --enable.
        #[arg(long)]
        disable: bool,
        /// A JSON merge patch (RFC 7396) of the same keys, applied after the
        /// flags; `null` clears a key: --patch '{"filter": null}'.
        #[arg(long, value_name = "JSON")]
        patch: Option<String>,
    },
    /// Delete an endpoint made through the API; its pending deliveries are cancelled.
    Rm { id: String },
    /// Send a signed test event now and print the receiver's answer.
    Test {
        id: String,
        /// The event type to send [default: the endpoint's first].
        #[arg(long)]
        event_type: Option<String>,
        /// A JSON file sent as the event body [default: the catalog's example].
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
    },
    /// Give an endpoint a new secret; the old one also signs during the grace.
    RotateSecret {
        id: String,
        /// How long the old secret keeps signing [default: 24h, at most 30d].
        #[arg(long, value_parser = duration_text)]
        grace: Option<String>,
    },
}

/// The settings `endpoints add` and `endpoints edit` share; each given one
/// becomes a key of the request body, the others are left out.
#[derive(clap::Args)]
struct EndpointSettings {
    /// An event type it receives (repeat for more; `*` for all) [add default: *].
    #[arg(long = "event", value_name = "TYPE")]
    events: Vec<String>,
    /// Only events of this route [default: every route].
    #[arg(long)]
    route: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// What body is sent.
    #[arg(long, value_parser = ["original", "json", "xml", "template"])]
    format: Option<String>,
    /// A template read from this local file (with --format template).
    #[arg(long, value_name = "PATH")]
    template_file: Option<PathBuf>,
    /// The content-type of the body sent.
    #[arg(long, value_name = "CT")]
    content_type: Option<String>,
    /// The root element of an XML body.
    #[arg(long, value_name = "X")]
    xml_root: Option<String>,
    /// HTTP basic authentication to the receiver.
    #[arg(long, value_name = "USER:PASSWORD", value_parser = client::parse_basic_auth)]
    basic_auth: Option<(String, String)>,
    /// A header sent with every delivery (repeat for more).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = client::parse_header)]
    headers: Vec<(String, String)>,
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// How long one attempt may take (`10s`).
    #[arg(long, value_parser = duration_text)]
    timeout: Option<String>,
    /// Deliveries to it in flight at once.
    #[arg(long, value_name = "N")]
    concurrency: Option<u32>,
    /// Requests a second to it.
    #[arg(long, value_name = "N")]
    rate_per_second: Option<u32>,
    /// Requests it may get at once above the rate.
    #[arg(long, value_name = "N")]
    rate_burst: Option<u32>,
    /// A label kept with it (repeat for more).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = client::parse_pair)]
    metadata: Vec<(String, String)>,
}

impl EndpointSettings {
    /// Adds the given settings to `body`, an object.
    fn apply(self, body: &mut Value) -> anyhow::Result<()> {
        let map = |pairs: Vec<(String, String)>| -> Value {
            Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect())
        };
        if !self.events.is_empty() {
            body["events"] = json!(self.events);
        }
        for (key, value) in [
            ("route", self.route),
            ("description", self.description),
            ("format", self.format),
            ("content_type", self.content_type),
            ("xml_root", self.xml_root),
        ] {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        if let Some(path) = self.template_file {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--template-file {}", path.display()))?;
            body["template"] = json!(text);
        }
        if let Some((username, password)) = self.basic_auth {
            body["basic_auth"] = json!({"username": username, "password": password});
        }
        if !self.headers.is_empty() {
            body["headers"] = map(self.headers);
        }
        if let Some(n) = self.max_attempts {
            body["retry"]["max_attempts"] = json!(n);
        }
        if let Some(t) = self.timeout {
            body["retry"]["timeout"] = json!(t);
        }
        if let Some(n) = self.concurrency {
            body["concurrency"] = json!(n);
        }
        if let Some(n) = self.rate_per_second {
            body["rate"]["per_second"] = json!(n);
        }
        if let Some(n) = self.rate_burst {
            body["rate"]["burst"] = json!(n);
        }
        if !self.metadata.is_empty() {
            body["metadata"] = map(self.metadata);
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum EventsAction {
    /// The inbound log, newest first: every request the relay answered.
    List {
        #[arg(long)]
        route: Option<String>,
        /// Only events of this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        #[arg(long, value_parser = ["accepted", "duplicate", "rejected"])]
        outcome: Option<String>,
        /// At most this many [default: 50].
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after this entry id (from a previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One stored event (an evt_ id): what came in and each delivery's attempts.
    Show { id: String },
}

/// A duration as the API takes it (`10s`, `24h`), checked here so a typo
/// is a usage error.
fn duration_text(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?}: {e}"))
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("HOOKRELAY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/hookrelay/hookrelay.toml"))
}

/// jemalloc: memory freed after a drain or a purge goes back to the
/// system (docs/PERFORMANCE.md, Memory).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config_path(config)),
        Command::CheckConfig { config } => check_config(config_path(config)),
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

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    println!("{}: ok", path.display());
    let addrs = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  ingest: {}", addrs(&config.ingest.listen));
    println!("  store:  {}", config.store.path.display());
    for route in &config.routes {
        println!(
            "  route {} {:?} event {:?}",
            route.name, route.path, route.event
        );
        for t in &route.targets {
            let events: Vec<String> = t.events.iter().map(|e| format!("{e:?}")).collect();
            println!(
                "    target {} -> {} ({} secret(s), events {})",
                t.name,
                t.url,
                t.secret.0.len(),
                events.join(" ")
            );
            let body = match &t.outbound.shape.body {
                Body::Xml(root) => format!("xml <{}>", root.as_str()),
                other => other.format().to_string(),
            };
            // Header names only: values may be secrets.
            let headers: Vec<&str> = t.outbound.headers.iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "      body {body}{}{}",
                if t.filter.is_some() { ", filtered" } else { "" },
                if headers.is_empty() {
                    String::new()
                } else {
                    format!(", headers {}", headers.join(" "))
                }
            );
        }
    }
    Ok(())
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

fn api(opts: ApiOpts, what: Api) -> anyhow::Result<()> {
    let path = config_path(opts.config);
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
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{text}");
    }
    Ok(())
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
            let v = remote.call(
                "POST",
                "/api/deliveries/retry",
                Some(json!({"state": state, "target": target})),
            )?;
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
            settings.apply(&mut body)?;
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
            settings.apply(&mut body)?;
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

fn serve(path: PathBuf) -> anyhow::Result<()> {
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
