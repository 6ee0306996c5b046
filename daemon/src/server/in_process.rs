//! A daemon without a socket: the store, shared state and method table `sotalign serve` builds,
//! with connections driven by handing them decoded messages ([`Connection`] is a tower
//! `Service`). For tests and the request-handler fuzzer (`fuzz/src/handlers.rs`), which feed
//! messages to the real dispatcher and handlers without framing or threads of their own.
//!
//! It installs nothing process-wide: caps and read scope are whatever [`crate::limits::install`]
//! set (the defaults and no scope otherwise). No earlier model is restored from the store.
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::backend::{Backend, ConnState};
use super::dispatch::{Connection, Router};
use super::state::{Options, Shared};

pub struct InProcess {
    shared: Arc<Shared>,
    router: Arc<Router>,
}

impl InProcess {
    /// Open (or create) the store in `data_dir` and serve it on the CPU, frame bodies capped at
    /// `max_body` bytes (what `initialize` announces).
    pub fn open(data_dir: &Path, max_body: usize) -> anyhow::Result<Self> {
        let store = crate::store::Store::open(data_dir)
            .with_context(|| format!("opening the store in {}", data_dir.display()))?;
        let shared = Shared::new(
            Options {
                data_dir: data_dir.to_path_buf(),
                device: "cpu".into(),
                token: None,
                max_body,
                assets_dir: data_dir.join("assets"),
                index: Default::default(),
            },
            store,
        );
        shared
            .reload_view()
            .map_err(|e| anyhow::anyhow!("reading the store into memory: {}", e.message))?;
        Ok(Self {
            shared,
            router: Arc::new(Backend::router()),
        })
    }

    /// A new client connection, not yet initialized (as a loopback client without a token);
    /// [`Connection::close`] it when done, as the transport does.
    pub fn connect(&self) -> Connection {
        let conn = Arc::new(ConnState::new(self.shared.next_connection_id(), false));
        Connection::new(
            self.router.clone(),
            Arc::new(Backend::new(self.shared.clone(), conn)),
        )
    }

    /// What every connection shares (jobs, the served model, the store).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Every request method of the table (lifecycle methods excluded).
    pub fn methods(&self) -> Vec<&'static str> {
        self.router.methods()
    }
}
