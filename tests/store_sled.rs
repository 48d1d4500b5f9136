//! The store contract (tests/contract/) against the sled backend.

mod contract;

use std::sync::Arc;
use std::time::Duration;

use hookrelay::store::{SledStore, Store, StoreConfig};

/// A sled store in its own temporary directory.
struct Sled {
    dir: tempfile::TempDir,
    retention: Duration,
}

impl contract::Backend for Sled {
    fn new(retention: Duration) -> Sled {
        Sled {
            dir: tempfile::tempdir().unwrap(),
            retention,
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        let config = StoreConfig {
            path: self.dir.path().to_path_buf(),
            retention: self.retention,
            ..StoreConfig::default()
        };
        Arc::new(SledStore::open(&config).unwrap())
    }
}

contract::store_contract!(Sled);
