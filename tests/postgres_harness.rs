//! The throwaway PostgreSQL server of the PostgreSQL store's tests
//! (common::postgres) does what those tests count on: data that survives a
//! stop and a restart, fsync on, a fresh database per call, one shared
//! server for a whole test binary, and no server left behind by a test
//! process that is gone.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::postgres::Postgres;
use tokio_postgres::{Client, NoTls};

/// Connects to `url`; the connection runs on this test's runtime.
async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_committed_row_survives_a_stop_and_a_restart() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let url = pg.database().await;
    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE events (id int PRIMARY KEY, body text NOT NULL);")
        .await
        .unwrap();
    client
        .execute("INSERT INTO events VALUES (1, 'kept')", &[])
        .await
        .unwrap();

    // Twice: a test stops the server mid-load and starts it again, maybe
    // more than once.
    for _ in 0..2 {
        pg.stop().await;
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "a session survived the stop"
        );
        assert!(
            tokio_postgres::connect(&url, NoTls).await.is_err(),
            "a stopped server took a connection"
        );
        pg.restart().await;
        let client = connect(&url).await;
        let row = client
            .query_one("SELECT body FROM events WHERE id = 1", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "kept");
    }
}

#[tokio::test]
async fn the_server_flushes_what_it_commits() {
    let Some(pg) = Postgres::shared().await else {
        return;
    };
    let client = connect(&pg.database().await).await;
    for (setting, value) in [("fsync", "on"), ("synchronous_commit", "on")] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), value, "{setting}");
    }
}

#[tokio::test]
async fn each_database_is_new_and_empty() {
    let Some(pg) = Postgres::shared().await else {
        return;
    };
    let (a, b) = (pg.database().await, pg.database().await);
    assert_ne!(a, b);
    let (a, b) = (connect(&a).await, connect(&b).await);
    a.batch_execute("CREATE TABLE only_in_a (id int)")
        .await
        .unwrap();
    let in_b = b
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(in_b.get::<_, i64>(0), 0);
}

/// Each #[tokio::test] has a runtime of its own; the shared server must not
/// depend on the one that happened to start it.
#[test]
fn the_shared_server_outlives_the_runtime_that_used_it() {
    let ask = || async {
        let pg = Postgres::shared().await?;
        let client = connect(&pg.database().await).await;
        let row = client.query_one("SELECT 1", &[]).await.unwrap();
        Some((pg.port(), row.get::<_, i32>(0)))
    };
    let runtime = || tokio::runtime::Runtime::new().unwrap();
    let Some(first) = runtime().block_on(ask()) else {
        return;
    };
    // The first runtime is gone; its tasks and sockets with it.
    let second = runtime().block_on(ask()).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.1, 1);
}

#[tokio::test]
async fn the_shared_server_serves_one_test() {
    the_shared_server_answers().await;
}

#[tokio::test]
async fn the_shared_server_serves_another_test() {
    the_shared_server_answers().await;
}

async fn the_shared_server_answers() {
    let Some(pg) = Postgres::shared().await else {
        return;
    };
    let again = Postgres::shared().await.unwrap();
    assert!(std::ptr::eq(pg, again), "a second shared server");
    let client = connect(&pg.database().await).await;
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

// === a test process that is gone ===

/// Which way `orphan` ends its test process; unset, it does nothing.
const ORPHAN: &str = "HOOKRELAY_PG_ORPHAN";
/// A file the parent creates once it has seen the child's server: until
/// then the child does not exit (its server would go before it is seen).
const ORPHAN_GO: &str = "HOOKRELAY_PG_ORPHAN_GO";

/// Run by `no_server_outlives_its_test_process` as a process of its own:
/// starts the shared server (which no destructor ever stops), says where it
/// is, then returns (the test binary exits) or waits to be killed.
#[tokio::test]
#[ignore = "a child of no_server_outlives_its_test_process"]
async fn orphan() {
    let Some(how) = std::env::var_os(ORPHAN) else {
        return;
    };
    let pg = Postgres::shared().await.expect("PostgreSQL is installed");
    let pid = std::fs::read_to_string(pg.dir().join("data/postmaster.pid")).unwrap();
    println!(
        "server {} {} {}",
        pg.port(),
        pid.lines().next().unwrap(),
        pg.dir().display()
    );
    if how == "kill" {
        tokio::time::sleep(common::DEADLINE).await;
    } else if let Some(go) = std::env::var_os(ORPHAN_GO) {
        let go = PathBuf::from(go);
        common::eventually("the parent's go", || go.exists().then_some(())).await;
    }
}

/// Whether the test binary returns from main (no destructor of a static
/// runs) or is killed with SIGKILL, its server stops and its temp dir goes.
#[tokio::test]
async fn no_server_outlives_its_test_process() {
    if Postgres::shared().await.is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    for how in ["exit", "kill"] {
        let said = out.path().join(format!("{how}.out"));
        let go = out.path().join(format!("{how}.go"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["orphan", "--exact", "--ignored", "--nocapture"])
            .env(ORPHAN, how)
            .env(ORPHAN_GO, &go)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&said).unwrap())
            .spawn()
            .unwrap();
        let said = common::eventually(&format!("{how}: the child's server"), || {
            let text = std::fs::read_to_string(&said).ok()?;
            let line = text.lines().find_map(|l| l.strip_prefix("server "))?;
            Some(line.to_string())
        })
        .await;
        let mut fields = said.split(' ');
        let port: u16 = fields.next().unwrap().parse().unwrap();
        let postmaster = PathBuf::from("/proc").join(fields.next().unwrap());
        let dir = PathBuf::from(fields.next().unwrap());
        assert!(postmaster.exists() && dir.exists());
        std::fs::write(&go, b"").unwrap();

        if how == "kill" {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            assert_eq!(common::wait_exit(&mut child).await, Some(0));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        common::eventually_async(&format!("{how}: the server to go"), async || {
            let closed = tokio::net::TcpStream::connect(addr).await.is_err();
            (closed && !postmaster.exists() && !dir.exists()).then_some(())
        })
        .await;
    }
}
