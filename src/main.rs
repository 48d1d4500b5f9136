//! The `hookrelay` command: parses the command line and runs the library.
//! Exit codes: 0 clean stop, 1 config or startup error, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookrelay::config::Config;
use hookrelay::Relay;

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
        }
    }
    Ok(())
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .with_context(|| format!("{}: log.level: not a valid filter", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut signals = Signals::watch()?;
        let relay = Relay::start(config).await?;
        tracing::info!(config = %path.display(), "hookrelay ready");
        signals.wait_for_stop(&relay).await;
        tracing::info!("stopping");
        relay.shutdown().await.context("final flush failed")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The signals `serve` reacts to, watched from before the listeners open so
/// that none arrives unhandled.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; on SIGHUP, reloads TLS certificates and
    /// keeps serving.
    async fn wait_for_stop(&mut self, relay: &Relay) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading TLS certificates");
                    // Errors are logged by reload_tls; the relay keeps serving.
                    let _ = relay.reload_tls();
                }
            }
        }
    }
}
