//! A transaction in one round trip: `BEGIN`, its statements and `COMMIT`
//! go to the server together, and the relay waits once for all their
//! answers. tokio-postgres sends a request when its future is first
//! polled, so polling the futures in order, all before any answer has
//! come, queues them on the connection in that order.
//!
//! The server runs them as usual: a failed statement aborts the
//! transaction, the statements after it are refused, and the `COMMIT`
//! ends it as a rollback. A statement the client cannot send (its
//! parameters do not encode) fails before anything is sent for it, so the
//! transaction is then ended with `ROLLBACK` instead. The answer is the
//! first error, so nothing is reported kept that was not. However the
//! futures end (even dropped once polled), the end of the transaction was
//! sent, so the connection goes back to the pool outside a transaction.
//!
//! This relies on tokio-postgres sending a request before its future
//! first waits (true of `Client::query` with a prepared statement and of
//! `batch_execute` in 0.7.18, the version `Cargo.toml` pins for it).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};

/// Begins a transaction with `synchronous_commit` on (the connections'
/// setting): its `COMMIT` answers once the commit is durable.
pub(super) const DURABLE: &str = "BEGIN";

/// Begins a transaction whose `COMMIT` answers before the WAL is flushed
/// (`synchronous_commit = off`, for this transaction only). For the
/// changes of deliveries already accepted: claims and attempt outcomes.
/// A server crash may forget the last few of them (at most three times
/// `wal_writer_delay`, 600 ms by default); a forgotten claim or outcome
/// means the delivery is attempted again, never that an event is lost.
/// Flushing any later durable commit (an accepted event's) flushes them
/// too: the WAL is written in order.
pub(super) const LAZY: &str = "BEGIN; SET LOCAL synchronous_commit = off";

type Answer<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, Error>> + Send + 'a>>;
type End<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Runs `statements` (prepared, with their parameters) in one transaction
/// begun with `begin`; each statement's rows, in order.
pub(super) async fn one_trip<'c>(
    client: &'c Client,
    begin: &str,
    statements: &[(&Statement, &[&(dyn ToSql + Sync)])],
) -> Result<Vec<Vec<Row>>, Error> {
    let mut begun = Some(Box::pin(client.batch_execute(begin)));
    let mut answers: Vec<Option<Answer<'_>>> = statements
        .iter()
        .map(|(statement, params)| Some(Box::pin(client.query(*statement, params)) as Answer<'_>))
        .collect();
    // Made after the first pass: a statement the client could not even
    // send (its parameters did not encode) has failed by then without the
    // server knowing, and the transaction must then end in a rollback.
    let mut ending: Option<End<'c>> = None;
    let mut sent_end = false;

    let mut begin_result: Option<Result<(), Error>> = None;
    let mut rows: Vec<Option<Result<Vec<Row>, Error>>> = statements.iter().map(|_| None).collect();
    let mut end_result: Option<Result<(), Error>> = None;
    std::future::poll_fn(|cx| {
        if let Some(f) = begun.as_mut() {
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                begin_result = Some(r);
                begun = None;
            }
        }
        for (slot, out) in answers.iter_mut().zip(rows.iter_mut()) {
            if let Some(f) = slot.as_mut() {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    *out = Some(r);
                    *slot = None;
                }
            }
        }
        if !sent_end {
            sent_end = true;
            let failed = matches!(begin_result, Some(Err(_)))
                || rows.iter().any(|r| matches!(r, Some(Err(_))));
            ending = Some(end(client, failed));
        }
        if let Some(f) = ending.as_mut() {
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                end_result = Some(r);
                ending = None;
            }
        }
        if begun.is_none() && ending.is_none() && answers.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;

    // Every future finished, so every result is here; the first error
    // is the one that aborted the transaction.
    if let Some(Err(e)) = begin_result {
        return Err(e);
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in rows.into_iter().flatten() {
        out.push(r?);
    }
    if let Some(Err(e)) = end_result {
        return Err(e);
    }
    Ok(out)
}

/// The end of the transaction: `COMMIT`, or `ROLLBACK` when it failed.
fn end(client: &Client, failed: bool) -> End<'_> {
    Box::pin(client.batch_execute(if failed { "ROLLBACK" } else { "COMMIT" }))
}
