//! The command line: every subcommand and flag of `hookrelay`, as clap
//! parses them, and where the config file is looked for.
//!
//! It lives in the library, not in `main.rs`, so that the man page
//! (`packaging/hookrelay.1`) is rendered from the same definition that
//! parses the arguments, and a test keeps the two the same. The summary
//! `check-config` prints is made here too, so it can be tested as text;
//! it never shows a header value or a secret.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::admin::client;
use crate::config::Config;
use crate::deliver::policy::DeliveryConfig;
use crate::deliver::shape::Body;

/// The config file used when neither `--config` nor `HOOKRELAY_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/hookrelay/hookrelay.toml";

/// Why the command line names no usable config file.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "no config file at {DEFAULT_CONFIG} (the default); \
         pass one with --config PATH (or -c PATH), or set HOOKRELAY_CONFIG=PATH"
    )]
    NoDefaultConfig,
    #[error(
        "HOOKRELAY_CONFIG names {0}, which does not exist; \
         pass another with --config PATH (or -c PATH)"
    )]
    NoEnvConfig(String),
}

/// The config file: `--config`, else `$HOOKRELAY_CONFIG` (`env`), else
/// [`DEFAULT_CONFIG`]. A path given with `--config` is returned as is (its
/// load names it when it cannot be read); one found otherwise must exist,
/// so that its error can say where it looked and how to name another.
pub fn config_path(flag: Option<PathBuf>, env: Option<OsString>) -> Result<PathBuf, CliError> {
    if let Some(path) = flag {
        return Ok(path);
    }
    match env {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if path.exists() {
                Ok(path)
            } else {
                Err(CliError::NoEnvConfig(path.display().to_string()))
            }
        }
        _ => {
            let path = PathBuf::from(DEFAULT_CONFIG);
            if path.exists() {
                Ok(path)
            } else {
                Err(CliError::NoDefaultConfig)
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "A durable webhook relay for learning platforms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Apply the PostgreSQL store's missing schema migrations
    /// (store.backend = "postgres"); a relay does it at start unless
    /// store.postgres.migrate = false.
    Migrate {
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
pub struct ApiOpts {
    /// Config file naming the admin address and tokens file
    /// [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/hookrelay.toml]
    #[arg(short = 'c', long, global = true, display_order = 100)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true, display_order = 100)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum HooksAction {
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
pub enum DeliveriesAction {
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
pub enum EndpointsAction {
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
pub struct EndpointSettings {
    /// An event type it receives (repeat for more; `*` for all) [add default: *].
    #[arg(long = "event", value_name = "TYPE")]
    pub events: Vec<String>,
    /// Only events of this route [default: every route].
    #[arg(long)]
    pub route: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// What body is sent.
    #[arg(long, value_parser = ["original", "json", "xml", "template"])]
    pub format: Option<String>,
    /// A template read from this local file (with --format template).
    #[arg(long, value_name = "PATH")]
    pub template_file: Option<PathBuf>,
    /// The content-type of the body sent.
    #[arg(long, value_name = "CT")]
    pub content_type: Option<String>,
    /// The root element of an XML body.
    #[arg(long, value_name = "X")]
    pub xml_root: Option<String>,
    /// HTTP basic authentication to the receiver.
    #[arg(long, value_name = "USER:PASSWORD", value_parser = client::parse_basic_auth)]
    pub basic_auth: Option<(String, String)>,
    /// A header sent with every delivery (repeat for more).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = client::parse_header)]
    pub headers: Vec<(String, String)>,
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// How long one attempt may take (`10s`).
    #[arg(long, value_parser = duration_text)]
    pub timeout: Option<String>,
    /// Deliveries to it in flight at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Requests a second to it.
    #[arg(long, value_name = "N")]
    pub rate_per_second: Option<u32>,
    /// Requests it may get at once above the rate.
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// A label kept with it (repeat for more).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = client::parse_pair)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Subcommand)]
pub enum EventsAction {
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
pub fn duration_text(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?}: {e}"))
}

// === check-config ===

/// What `check-config` prints for a valid `config` read from `path`: the
/// listeners, the store, each route and each target with its effective
/// delivery policy, then one `warning:` line for each value left as the
/// examples have it, and the `warnings` found outside the file (the store's).
/// Header values and secrets are never printed.
pub fn summary(config: &Config, path: &Path, warnings: &[String]) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let addrs = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    line(format!("{}: ok", path.display()));
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    line(format!(
        "  ingest   {} ({}{})",
        addrs(&config.ingest.listen),
        scheme(config.ingest.tls.is_some()),
        if config.ingest.proxy {
            ", proxy mode"
        } else {
            ""
        }
    ));
    if config.admin.listen.is_empty() {
        line("  admin    off".into());
    } else {
        line(format!(
            "  admin    {} ({}), tokens {}",
            addrs(&config.admin.listen),
            scheme(config.admin.tls.is_some()),
            config.admin.tokens_path(&config.base_dir).display()
        ));
    }
    line(match config.store.backend {
        crate::store::Backend::Sled => format!("  store    {} (sled)", config.store.path.display()),
        crate::store::Backend::Postgres => format!(
            "  store    {} (postgres, shared by the fleet; not contacted by this check)",
            config.store.postgres.location()
        ),
    });
    for route in &config.routes {
        let host = match &route.host {
            Some(h) => format!(" for host {}", h.host),
            None => String::new(),
        };
        line(format!(
            "  route {}: POST {:?}{host}",
            route.name, route.path
        ));
        let event = match &route.event {
            Some(t) => t.describe(),
            None if route.path.captures("event") => "the path segment {event}".into(),
            None => format!("always \"{}\" (the route's name)", route.name),
        };
        line(format!("    event type  {event}"));
        if let Some(d) = &route.dedup {
            line(format!("    dedup on    {}", d.describe()));
        }
        if !route.catalog.is_empty() {
            let n = route.catalog.len();
            let s = if n == 1 { "" } else { "s" };
            line(format!("    catalog     {n} event type{s}"));
        }
        for t in &route.targets {
            line(format!("    target {} -> {}", t.name, t.url));
            let events: Vec<String> = t.events.iter().map(ToString::to_string).collect();
            line(format!("      events   {}", events.join(", ")));
            let body = match &t.outbound.shape.body {
                Body::Xml(root) => format!("xml, root <{}>", root.as_str()),
                other => other.format().to_string(),
            };
            let filtered = if t.filter.is_some() { ", filtered" } else { "" };
            line(format!("      body     {body}{filtered}"));
            let policy = t.policy(&config.delivery);
            line(format!("      retries  {}", schedule(&policy)));
            line(format!(
                "      rate     {}/s, burst {}; {} at once; timeout {}",
                policy.rate.per_second,
                policy.rate.burst,
                policy.concurrency,
                humantime::format_duration(policy.timeout)
            ));
            line(format!(
                "      signed   {}",
                match t.secret.0.len() {
                    0 => "no (no secret)".to_string(),
                    1 => "yes".to_string(),
                    n => format!("yes, {n} secrets (rotating)"),
                }
            ));
            // Names only: values may be secrets.
            let headers: Vec<&str> = t.outbound.headers.iter().map(|(n, _)| n.as_str()).collect();
            if !headers.is_empty() {
                line(format!("      headers  {}", headers.join(", ")));
            }
            if !t.enabled {
                line("      paused   (enabled = false)".into());
            }
        }
    }
    for warning in config.warnings().iter().chain(warnings) {
        line(format!("warning: {warning}"));
    }
    out
}

/// A delivery policy's retries in words: the attempts, the time they span
/// (the waits between them, from the backoff), each wait, and the jitter,
/// e.g. `11 attempts over ~3h 25m (waits 20s, 40s, ..., 1h) + jitter ±20%`.
pub fn schedule(policy: &DeliveryConfig) -> String {
    let attempts = policy.max_attempts;
    if attempts <= 1 {
        return "1 attempt, no retry".into();
    }
    let waits: Vec<Duration> = (1..attempts).map(|n| policy.backoff.delay(n)).collect();
    let total: Duration = waits.iter().sum();
    let shown: Vec<String> = waits.iter().map(|&d| short(d)).collect();
    // A long run of waits at the cap is said once.
    let listed = match shown.iter().position(|w| *w == short(policy.backoff.max)) {
        Some(first) if shown.len() - first > 2 => format!(
            "{}, then {} more of {}",
            shown[..=first].join(", "),
            shown.len() - first - 1,
            shown[first]
        ),
        _ => shown.join(", "),
    };
    let jitter = policy.backoff.jitter;
    let jitter = if jitter > 0.0 {
        format!(" + jitter ±{:.0}%", jitter * 100.0)
    } else {
        String::new()
    };
    format!(
        "{attempts} attempts over ~{} (waits {listed}){jitter}",
        short(total)
    )
}

/// A duration to the second, or to the minute from an hour up (`3h 25m`).
fn short(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    let secs = if secs >= 3600 {
        (secs + 30) / 60 * 60
    } else {
        secs
    };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
