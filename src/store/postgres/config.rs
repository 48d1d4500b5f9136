//! `[store.postgres]`: where the shared database is and how a relay uses it.

use std::time::Duration;

use serde::Deserialize;

/// The PostgreSQL backend's settings. `url` is the text after `env:` and
/// `file:` values were read (the config module reads them); it may hold
/// a password, so `Debug` never shows it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?sslmode=...`, or
    /// `env:NAME` / `file:/path` holding it.
    pub url: String,
    /// The schema hookrelay's tables live in (created if missing), so the
    /// database can be one the LMS also uses.
    pub schema: String,
    /// Most connections this relay opens (the LISTEN connection is one more).
    pub pool_size: usize,
    /// A statement running longer is cancelled, and the request that made
    /// it answers 503: a stuck database cannot hold ingest forever.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long opening a connection (and waiting for a free one) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a claim holds a delivery without being renewed. A relay
    /// renews its claims every quarter of this; one that dies stops, and
    /// the others take its deliveries once the lease has run out. Longer
    /// than `delivery.timeout` plus 5 s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often a relay looks for due work by itself: the backstop for a
    /// missed notification, retries another relay scheduled, and lapsed
    /// leases; with `listen = false`, the only way it learns of new work.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Wake the fleet with LISTEN/NOTIFY when work is committed. Turn it
    /// off behind a pooler that cannot LISTEN (pgbouncer in transaction
    /// mode): relays then poll every `poll_interval`.
    pub listen: bool,
    /// PEM certificates to trust for the database's TLS certificate, as
    /// well as the built-in web roots. TLS is used as the URL's `sslmode`
    /// says (`prefer`, the default, uses it when the server offers it;
    /// `require` insists; `disable` never); the certificate and the host
    /// name are always checked when it is used.
    pub ca_file: Option<std::path::PathBuf>,
    /// Apply missing schema migrations at start. With `false`, a relay
    /// whose schema is behind refuses to start until `hookrelay migrate`
    /// has run.
    pub migrate: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            schema: "hookrelay".into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            listen: true,
            ca_file: None,
            migrate: true,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"***")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("listen", &self.listen)
            .field("ca_file", &self.ca_file)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl PostgresConfig {
    /// What is wrong with these settings on their own, as (key, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.url.is_empty() {
            return Err((
                "url",
                "required with store.backend = \"postgres\" (postgres://..., env:NAME or file:/path)"
                    .into(),
            ));
        }
        let valid_schema = self.schema.len() <= 63
            && self
                .schema
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && self
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_schema {
            return Err((
                "schema",
                "a schema name is lower-case letters, digits and '_', starting with a letter or '_', at most 63"
                    .into(),
            ));
        }
        if !(1..=1000).contains(&self.pool_size) {
            return Err(("pool_size", "must be between 1 and 1000".into()));
        }
        for (key, d) in [
            ("statement_timeout", self.statement_timeout),
            ("connect_timeout", self.connect_timeout),
            ("poll_interval", self.poll_interval),
        ] {
            if d < Duration::from_millis(10) {
                return Err((key, "must be at least 10ms".into()));
            }
        }
        if self.poll_interval > Duration::from_secs(3600) {
            return Err(("poll_interval", "must be at most 1h".into()));
        }
        Ok(())
    }

    /// The database's address without credentials, for messages.
    pub fn location(&self) -> String {
        match self.url.parse::<tokio_postgres::Config>() {
            Ok(c) => {
                let host = c
                    .get_hosts()
                    .first()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .unwrap_or_else(|| "localhost".into());
                let port = c.get_ports().first().copied().unwrap_or(5432);
                format!(
                    "postgres://{host}:{port}/{} (schema {})",
                    c.get_dbname().unwrap_or(""),
                    self.schema
                )
            }
            Err(_) => format!("postgres (schema {})", self.schema),
        }
    }
}
