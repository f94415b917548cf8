//! The keep-alive connections to k_server that forwarded requests take turns on: a stack
//! of idle HTTP/1.1 connections, most recently used first.
//!
//! There is one k_server, so none of hyper-util's pool machinery is needed: its map
//! keyed by (scheme, authority) hashed with SipHash three times per request, its waiter
//! queues and its per-checkout futures cost about a tenth of k_proxy's instructions per
//! forwarded request (bench/RESULTS.md). What it did that matters is kept here:
//!
//! * a connection idle for longer than [`Pool::idle_timeout`] is never used again (k_server
//!   closes idle keep-alive connections after its own, longer, wait);
//! * at most `max_idle` idle connections are kept (per worker share, below);
//! * a request that meets a pooled connection closing before a byte of it was written is
//!   sent again on another connection (hyper hands it back unwritten: it cannot have
//!   reached k_server), as hyper-util's `retry_canceled_requests` did.
//!
//! The idle connections are kept in one share per connection worker thread (and one for
//! any other thread): a connection's driving task runs on the worker that opened it, so
//! a request borrowing it from its own worker's share never wakes another CPU.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::connect_deadline::ConnectDeadline;

pub type Connector = ConnectDeadline<HttpsConnector<HttpConnector>>;
type Sender = http1::SendRequest<Full<Bytes>>;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (TCP, TLS, or the connect deadline).
    #[error("cannot connect to k_server: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The exchange on a connection failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

pub struct Pool {
    connector: Connector,
    /// Where connections go (scheme, host, port of `--server-base-url`).
    base: Uri,
    /// Index 0 for threads that are no connection worker, then one per worker.
    shares: Box<[Mutex<VecDeque<Idle>>]>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// A connection lent to one exchange; [`Lease::release`] returns it once the answer has
/// been read whole. Dropped instead (an exchange that failed or was abandoned), the
/// connection is closed.
pub struct Lease<'p> {
    pool: &'p Pool,
    share: usize,
    sender: Sender,
}

impl Lease<'_> {
    pub fn release(self) {
        self.pool.check_in(self.share, self.sender);
    }
}

impl Pool {
    /// `workers`: the connection worker threads (0 when connections are served on the
    /// shared runtime).
    pub fn new(
        connector: Connector,
        base: Uri,
        workers: usize,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            base,
            shares: (0..=workers).map(|_| Mutex::default()).collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// Sends `request` (origin-form target, Host set) on an idle connection, or a new one.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease<'_>), PoolError> {
        let share = self.share();
        while let Some(mut sender) = self.check_out(share) {
            if sender.ready().await.is_err() {
                continue; // closed meanwhile: the next one
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        pool: self,
                        share,
                        sender,
                    };
                    return Ok((response, lease));
                }
                Err(mut err) => match err.take_message() {
                    // Handed back unwritten: k_server never saw it; try the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(err.into_error().into()),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        let lease = Lease {
            pool: self,
            share,
            sender,
        };
        Ok((response, lease))
    }

    /// This thread's share of the idle connections.
    fn share(&self) -> usize {
        match chromecard_http::current_worker() {
            Some(worker) => 1 + worker % (self.shares.len() - 1).max(1),
            None => 0,
        }
        .min(self.shares.len() - 1)
    }

    /// The most recently used idle connection that is still open and young enough.
    fn check_out(&self, share: usize) -> Option<Sender> {
        let mut idle = self.lock(share);
        while let Some(entry) = idle.pop_back() {
            if entry.since.elapsed() < self.idle_timeout && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn check_in(&self, share: usize, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock(share);
        // The oldest are at the front: drop those past their time (closing them).
        while idle
            .front()
            .is_some_and(|entry| now.duration_since(entry.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { sender, since: now });
        }
    }

    fn lock(&self, share: usize) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.shares[share]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new connection (TCP and, for https, TLS within the connect deadline), with its
    /// driving task spawned.
    async fn connect(&self) -> Result<Sender, PoolError> {
        let io = self
            .connector
            .clone()
            .call(self.base.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|err| PoolError::Connect(err.into()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection to k_server ended with an error");
            }
        });
        Ok(sender)
    }
}
