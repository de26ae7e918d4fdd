//! The way into the [`Core`]: a cloneable handle that sends each request to the core's thread and
//! awaits the reply on a oneshot channel (the shape of mini-redis's buffered client).
//!
//! The core runs on its own OS thread, not a tokio task, because every request touches SQLite
//! and would otherwise block a runtime worker. The channel is unbounded because callers are
//! bounded already (one in-flight request per RPC) and a bounded channel would only add a second
//! place to wait.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::error;

use crate::core::Core;
use crate::error::{CoordinatorError, Result};

type Request = Box<dyn FnOnce(&mut Core) + Send>;

#[derive(Clone)]
pub struct CoordinatorHandle {
    requests: mpsc::UnboundedSender<Request>,
    /// Signalled by the core when trials become pending; acquire calls wait on it.
    pub work_available: Arc<Notify>,
}

impl CoordinatorHandle {
    /// Starts the core's thread. It runs until every handle is dropped, then flushes and exits;
    /// the returned join handle lets the server wait for that.
    pub fn spawn(core: Core, work_available: Arc<Notify>) -> (CoordinatorHandle, std::thread::JoinHandle<()>) {
        let (requests, mut inbox) = mpsc::unbounded_channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("sweep-core".into())
            .spawn(move || {
                let mut core = core;
                while let Some(request) = inbox.blocking_recv() {
                    request(&mut core);
                }
                if let Err(err) = core.shutdown() {
                    error!(%err, "flushing on shutdown failed; staged metrics stay in the store for the next start");
                }
            })
            .expect("spawning the coordinator core thread");
        (CoordinatorHandle { requests, work_available }, thread)
    }

    /// Runs `f` on the core and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core) -> Result<T> + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Box::new(move |core: &mut Core| {
                // The caller may have gone (client hung up): nothing to tell it then.
                let _ = reply.send(f(core));
            }))
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        response.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }
}
