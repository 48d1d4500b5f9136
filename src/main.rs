//! The `hookrelay` command: parses the command line and runs the library.
//! Exit codes: 0 clean stop, 1 config or startup error, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookrelay::config::Config;
use hookrelay::deliver::shape::Body;
use hookrelay::{service, Relay};

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
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the config file and print a summary.
    CheckConfig {
        /// Config file [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/hookrelay.toml]
        #[arg(long)]
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
}

/// Where the admin API is, and how to print its answers.
#[derive(clap::Args)]
struct ApiOpts {
    /// Config file naming the admin address and tokens file
    /// [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/hookrelay.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
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

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("HOOKRELAY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/hookrelay/hookrelay.toml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config_path(config)),
        Command::CheckConfig { config } => check_config(config_path(config)),
        Command::Hooks { action, opts } => api(opts, Api::Hooks(action)),
        Command::Deliveries { action, opts } => api(opts, Api::Deliveries(action)),
        Command::Targets { opts } => api(opts, Api::Targets),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay: {e:#}");
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
                Body::Original => "original".to_string(),
                Body::Xml(root) => format!("xml <{}>", root.as_str()),
                Body::Template(_) => "template".to_string(),
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
}

fn api(opts: ApiOpts, what: Api) -> anyhow::Result<()> {
    use hookrelay::admin::client;
    use serde_json::json;

    let path = config_path(opts.config);
    let config = Config::load(&path)?;
    let admin = client::AdminClient::from_config(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let call = |method: &str, p: &str, body| runtime.block_on(admin.call(method, p, body));
    let enc = |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };

    let (value, text) = match what {
        Api::Hooks(HooksAction::List) => {
            let v = call("GET", "/api/hooks", None)?;
            let t = client::hooks_table(&v);
            (v, t)
        }
        Api::Hooks(HooksAction::Add {
            url,
            event,
            route,
            secret,
        }) => {
            let body = json!({"target_url": url, "event": event, "route": route, "secret": secret});
            let v = call("POST", "/api/hooks", Some(body))?;
            let t = format!(
                "subscribed {} to {} for {}\nsecret (shown once): {}\n",
                client::cell(&v["id"]),
                client::cell(&v["target_url"]),
                client::cell(&v["event"]),
                client::cell(&v["secret"])
            );
            (v, t)
        }
        Api::Hooks(HooksAction::Rm { id }) => {
            call("DELETE", &format!("/api/hooks/{}", enc(&id)), None)?;
            (json!({"deleted": id}), format!("unsubscribed {id}\n"))
        }
        Api::Hooks(HooksAction::Test { id }) => {
            let v = call("POST", &format!("/api/hooks/{}/test", enc(&id)), None)?;
            let t = match v["status"].as_u64() {
                Some(s) => format!("{id}: {s} in {} ms\n", v["duration_ms"]),
                None => format!("{id}: {}\n", client::cell(&v["error"])),
            };
            (v, t)
        }
        Api::Deliveries(DeliveriesAction::List {
            state,
            target,
            limit,
            after,
        }) => {
            let mut q = format!("limit={limit}");
            for (k, v) in [("state", state), ("target", target), ("after", after)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(&v)));
                }
            }
            let v = call("GET", &format!("/api/deliveries?{q}"), None)?;
            let t = client::deliveries_table(&v);
            (v, t)
        }
        Api::Deliveries(DeliveriesAction::Retry { id: Some(id), .. }) => {
            let v = call("POST", &format!("/api/deliveries/{}/retry", enc(&id)), None)?;
            let t = format!("re-queued {id}\n");
            (v, t)
        }
        Api::Deliveries(DeliveriesAction::Retry {
            id: None,
            state,
            target,
        }) => {
            let state = state.context("give a delivery id or --state (e.g. --state dead)")?;
            let v = call(
                "POST",
                "/api/deliveries/retry",
                Some(json!({"state": state, "target": target})),
            )?;
            let t = format!("re-queued {} deliveries\n", client::cell(&v["retried"]));
            (v, t)
        }
        Api::Targets => {
            let v = call("GET", "/api/targets", None)?;
            let t = client::targets_table(&v);
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
