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
//! * at most `max_idle` idle connections are kept;
//! * a request that meets a pooled connection closing before a byte of it was written is
//!   sent again on another connection (hyper hands it back unwritten: it cannot have
//!   reached k_server), as hyper-util's `retry_canceled_requests` did.

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
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// A connection lent to one exchange; [`Lease::release`] returns it once the answer has
/// been read whole. Dropped instead (an exchange that failed or was abandoned), the
/// connection is closed.
pub struct Lease<'p> {
    pool: &'p Pool,
    sender: Sender,
}

impl Lease<'_> {
    pub fn release(self) {
        self.pool.check_in(self.sender);
    }
}

impl Pool {
    pub fn new(connector: Connector, base: Uri, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            connector,
            base,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Sends `request` (origin-form target, Host set) on an idle connection, or a new one.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease<'_>), PoolError> {
        while let Some(mut sender) = self.check_out() {
            if sender.ready().await.is_err() {
                continue; // closed meanwhile: the next one
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease { pool: self, sender })),
                Err(mut err) => match err.take_message() {
                    // Handed back unwritten: k_server never saw it; try the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(err.into_error().into()),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        Ok((response, Lease { pool: self, sender }))
    }

    /// The most recently used idle connection that is still open and young enough.
    fn check_out(&self) -> Option<Sender> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop_back() {
            if entry.since.elapsed() < self.idle_timeout && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn check_in(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle
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
