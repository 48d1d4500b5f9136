//! The schema and its versioned migrations.
//!
//! Each migration is a SQL file compiled into the binary and applied once,
//! in order, in one transaction with its row in `schema_migrations`, under
//! an advisory lock: relays starting together apply it once between them.
//! A relay refuses a schema newer than the newest migration it knows (an
//! older binary must not write to tables it does not understand).

use deadpool_postgres::Object;

use super::{db_error, PostgresConfig};
use crate::store::StoreError;

/// (version, name, SQL), oldest first.
const MIGRATIONS: &[(u8, &str, &str)] =
    &[(1, "initial", include_str!("migrations/0001_initial.sql"))];

/// The schema version this hookrelay reads and writes.
pub const VERSION: u8 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Brings the schema up to date when `pg.migrate` allows it; otherwise
/// checks that it is.
pub(super) async fn prepare(client: &mut Object, pg: &PostgresConfig) -> Result<(), StoreError> {
    if pg.migrate {
        apply(client, pg).await?;
        return Ok(());
    }
    let found = version(client, pg).await?;
    check(found, pg)?;
    if found < VERSION {
        return Err(StoreError::Migrate {
            found,
            known: VERSION,
        });
    }
    Ok(())
}

/// `hookrelay migrate`: connects and applies every missing migration;
/// returns those applied, as (version, name).
pub async fn migrate(pg: &PostgresConfig) -> Result<Vec<(u8, &'static str)>, StoreError> {
    let pool = super::pool(pg)?;
    let mut client = pool.get().await.map_err(super::pool_error)?;
    apply(&mut client, pg).await
}

fn check(found: u8, pg: &PostgresConfig) -> Result<(), StoreError> {
    if found > VERSION {
        return Err(StoreError::Schema {
            path: pg.location(),
            found,
            known: VERSION,
        });
    }
    Ok(())
}

/// The schema's version: 0 when it has none yet.
async fn version(client: &Object, pg: &PostgresConfig) -> Result<u8, StoreError> {
    let row = client
        .query_one(
            "SELECT to_regclass(quote_ident($1) || '.schema_migrations') IS NOT NULL",
            &[&pg.schema],
        )
        .await
        .map_err(|e| db_error(&e))?;
    let exists: bool = row.try_get(0).map_err(|e| db_error(&e))?;
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(version), 0) FROM {}.schema_migrations",
                pg.schema
            ),
            &[],
        )
        .await
        .map_err(|e| db_error(&e))?;
    let v: i32 = row.try_get(0).map_err(|e| db_error(&e))?;
    Ok(v.clamp(0, u8::MAX as i32) as u8)
}

async fn apply(
    client: &mut Object,
    pg: &PostgresConfig,
) -> Result<Vec<(u8, &'static str)>, StoreError> {
    let schema = &pg.schema;
    let tx = client.transaction().await.map_err(|e| db_error(&e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("hookrelay:{schema}:migrate")],
    )
    .await
    .map_err(|e| db_error(&e))?;
    // Created only when missing: CREATE SCHEMA needs the CREATE privilege
    // on the database even when the schema exists, and a DBA may have made
    // it for the relay's role.
    let exists = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[schema],
        )
        .await
        .map_err(|e| db_error(&e))?
        .try_get::<_, bool>(0)
        .map_err(|e| db_error(&e))?;
    if !exists {
        // The schema name was checked at load: letters, digits and '_'.
        tx.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| db_error(&e))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ( \
           version integer PRIMARY KEY, \
           name text NOT NULL, \
           applied_at timestamptz NOT NULL DEFAULT now()); \
         SET LOCAL search_path TO {schema}"
    ))
    .await
    .map_err(|e| db_error(&e))?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))?;
    let found: i32 = row.try_get(0).map_err(|e| db_error(&e))?;
    let found = found.clamp(0, u8::MAX as i32) as u8;
    check(found, pg)?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).await.map_err(|e| db_error(&e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&(version as i32), &name],
        )
        .await
        .map_err(|e| db_error(&e))?;
        applied.push((version, name));
    }
    tx.commit().await.map_err(|e| db_error(&e))?;
    for (version, name) in &applied {
        tracing::info!(version, name, schema = %schema, "applied a schema migration");
    }
    Ok(applied)
}
