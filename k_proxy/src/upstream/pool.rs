//! The connections to k_server that forwarded requests take turns on: a stack of idle
//! HTTP/1.1 keep-alive connections, most recently used first, and (over TLS, when k_server
//! offers it) one multiplexed HTTP/2 connection, per connection worker thread.
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
//! **Which protocol** (`--upstream-http2`): with `concurrent`, the default, a request
//! that finds others in flight from its worker joins them on the worker's HTTP/2
//! connection, and so do the next 8 that find none, whenever they come (a busy worker's
//! quiet moments); a request alone after those goes on an HTTP/1.1 connection. Measured
//! (bench/RESULTS.md): HTTP/2 carries many requests per system call and TLS record under
//! load, so the chain spends less CPU per request, but a lone request waits longer on it
//! than on HTTP/1.1. `always` puts every request on HTTP/2, `never` none. The HTTP/2
//! connection is opened offering both protocols; a k_server that picks HTTP/1.1 gets that
//! connection used as HTTP/1.1, so an older k_server (or one run with `--no-http2`) is
//! served as before.
//!
//! The connections are kept in one share per connection worker thread (and one for any
//! other thread): a connection's driving task runs on the worker that opened it, so a
//! request borrowing it from its own worker's share never wakes another CPU.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioTimer;
use tower_service::Service;

use crate::connect_deadline::ConnectDeadline;

pub type Connector = ConnectDeadline<HttpsConnector<HttpConnector>>;
type Sender = http1::SendRequest<Full<Bytes>>;
type MultiplexedSender = http2::SendRequest<Full<Bytes>>;

/// How often an HTTP/2 connection with requests in flight pings k_server, and how long
/// the answer may take: a k_server that stopped answering fails those requests at once
/// (and the next ones get a new connection) instead of each waiting for its own timeout.
const H2_PING_INTERVAL: Duration = Duration::from_secs(5);

/// When forwarded requests use HTTP/2 (`--upstream-http2`, over TLS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamHttp2 {
    /// Requests that find others from their worker in flight (and the next few alone)
    /// share one HTTP/2 connection; a request alone after those takes HTTP/1.1.
    Concurrent,
    /// Every request goes on the worker's HTTP/2 connection.
    Always,
    /// HTTP/1.1 connections only.
    Never,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (TCP, TLS, or the connect deadline).
    #[error("cannot connect to k_server: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The exchange on a connection failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The request's target could not be made absolute for HTTP/2.
    #[error("the request target cannot be sent over HTTP/2: {0}")]
    Target(#[from] http::uri::InvalidUriParts),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One worker's connections.
struct Share {
    idle: Mutex<VecDeque<Idle>>,
    /// Requests from this worker between [`Pool::send`] and the end of their lease.
    in_flight: AtomicUsize,
    /// Requests in a row that found nothing else in flight (up to
    /// [`LONE_BEFORE_HTTP1`]): see [`Share::recently_busy`].
    lone_streak: AtomicUsize,
    /// The HTTP/2 connection; locked across its connect, so that a burst of requests
    /// opens one connection, not one each.
    multiplexed: tokio::sync::Mutex<MultiplexedSlot>,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            idle: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            // A worker starts idle: its first lone request goes over HTTP/1.1.
            lone_streak: AtomicUsize::new(LONE_BEFORE_HTTP1),
            multiplexed: tokio::sync::Mutex::default(),
        }
    }
}

impl Share {
    /// Whether a request with `others` in flight beside it from this worker is part of
    /// concurrent traffic: it has company, or it is one of the first few alone since a
    /// request that had (counted, not timed: the next 8 lone requests, whenever they
    /// come). Under load the moments with nothing in flight come and go, and the requests
    /// that fell into them went over HTTP/1.1: about 2% at 64 connections, while k_proxy
    /// spent 14.1-14.9 µs per request against 13.6-13.9 with all of them on HTTP/2
    /// (bench/RESULTS.md, 2026-12-07; how much of that gap those requests made, the A/B
    /// cannot say).
    fn recently_busy(&self, others: usize) -> bool {
        if others > 0 {
            self.lone_streak.store(0, Ordering::Relaxed);
            return true;
        }
        // One atomic step: share 0 (threads that are no connection worker, or all of
        // them with --connection-threads 0) is counted from several threads at once.
        self.lone_streak
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |streak| {
                (streak < LONE_BEFORE_HTTP1).then_some(streak + 1)
            })
            .is_ok()
    }
}

/// Lone requests in a row that still take the HTTP/2 connection after concurrent ones:
/// enough to bridge the gaps of a busy worker, few enough that a client alone (one
/// request at a time) is on HTTP/1.1 again after a handful.
const LONE_BEFORE_HTTP1: usize = 8;

#[derive(Default)]
enum MultiplexedSlot {
    #[default]
    None,
    Open(MultiplexedSender),
    /// k_server chose HTTP/1.1 when HTTP/2 was offered: asked again only after
    /// [`ASK_AGAIN_FOR_H2`] (it may be restarted without `--no-http2`), not per request.
    Refused(tokio::time::Instant),
    /// The last connect failed: for [`AFTER_FAILED_CONNECT`] requests go the HTTP/1.1
    /// way (each connecting on its own) instead of queueing here behind one connect
    /// after another, each up to `--upstream-connect-timeout`.
    Failed(tokio::time::Instant),
}

/// How long requests skip HTTP/2 after a failed connect.
pub(super) const AFTER_FAILED_CONNECT: Duration = Duration::from_secs(1);

/// How long HTTP/1.1 is used without asking again after k_server declined HTTP/2.
pub(super) const ASK_AGAIN_FOR_H2: Duration = Duration::from_secs(60);

/// What HTTP/2 needs: its own connector (ALPN `h2` and `http/1.1`; the pool's offers only
/// the latter), and the scheme and authority HTTP/2 sends as pseudo-header fields.
pub struct Multiplexing {
    /// `Concurrent` or `Always` (with `Never` there is no `Multiplexing`: upstream.rs).
    pub when: UpstreamHttp2,
    pub connector: Connector,
    pub scheme: Scheme,
    pub authority: Authority,
}

pub struct Pool {
    connector: Connector,
    /// Where connections go (scheme, host, port of `--server-base-url`).
    base: Uri,
    /// Index 0 for threads that are no connection worker, then one per worker.
    shares: Box<[Share]>,
    max_idle: usize,
    idle_timeout: Duration,
    multiplexing: Option<Multiplexing>,
}

/// A connection lent to one exchange; [`Lease::release`] returns it once the answer has
/// been read whole. Dropped instead (an exchange that failed or was abandoned), the
/// connection is closed. Either way the request stops counting as in flight.
pub struct Lease<'p> {
    pool: &'p Pool,
    share: usize,
    /// None for a request on the HTTP/2 connection, which is shared rather than lent.
    sender: Option<Sender>,
}

impl Lease<'_> {
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.check_in(self.share, sender);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.shares[self.share]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A new connection, as k_server chose by ALPN.
enum Connected {
    Http1(Sender),
    Http2(MultiplexedSender),
}

/// How a request offered to the HTTP/2 connection fared.
enum Multiplexed {
    Answered(Response<Incoming>),
    /// Not sent (the connection closed first, k_server declined HTTP/2 a moment ago, or
    /// the connect failed): send it on HTTP/1.1.
    Unsent(Request<Full<Bytes>>),
    /// k_server chose HTTP/1.1 for the new connection: send it there.
    Http1(Sender, Request<Full<Bytes>>),
}

impl Pool {
    /// `workers`: the connection worker threads (0 when connections are served on the
    /// shared runtime). `multiplexing`: None for HTTP/1.1 only.
    pub fn new(
        connector: Connector,
        base: Uri,
        workers: usize,
        max_idle: usize,
        idle_timeout: Duration,
        multiplexing: Option<Multiplexing>,
    ) -> Self {
        Self {
            connector,
            base,
            shares: (0..=workers).map(|_| Share::default()).collect(),
            max_idle,
            idle_timeout,
            multiplexing,
        }
    }

    /// Sends `request` (origin-form target, Host set) on the HTTP/2 connection, an idle
    /// HTTP/1.1 connection, or a new one.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease<'_>), PoolError> {
        let share = self.share();
        let others = self.shares[share].in_flight.fetch_add(1, Ordering::Relaxed);
        // From here the lease (or this guard's drop on an early return) ends the count.
        let mut lease = Lease {
            pool: self,
            share,
            sender: None,
        };
        if let Some(multiplexing) = self.multiplexing_for(share, others) {
            match self.send_multiplexed(multiplexing, share, request).await? {
                Multiplexed::Answered(response) => return Ok((response, lease)),
                Multiplexed::Unsent(unsent) => request = unsent,
                Multiplexed::Http1(mut sender, unsent) => {
                    let response = sender.send_request(unsent).await?;
                    lease.sender = Some(sender);
                    return Ok((response, lease));
                }
            }
        }
        while let Some(mut sender) = self.check_out(share) {
            if sender.ready().await.is_err() {
                continue; // closed meanwhile: the next one
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    lease.sender = Some(sender);
                    return Ok((response, lease));
                }
                Err(mut err) => match err.take_message() {
                    // Handed back unwritten: k_server never saw it; try the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(err.into_error().into()),
                },
            }
        }
        let mut sender = self.connect_http1().await?;
        let response = sender.send_request(request).await?;
        lease.sender = Some(sender);
        Ok((response, lease))
    }

    /// The HTTP/2 settings, when a request from `share` with `others` in flight beside
    /// it should use them.
    fn multiplexing_for(&self, share: usize, others: usize) -> Option<&Multiplexing> {
        self.multiplexing
            .as_ref()
            .filter(|m| m.when == UpstreamHttp2::Always || self.shares[share].recently_busy(others))
    }

    async fn send_multiplexed(
        &self,
        multiplexing: &Multiplexing,
        share: usize,
        request: Request<Full<Bytes>>,
    ) -> Result<Multiplexed, PoolError> {
        let mut sender = {
            let mut slot = self.shares[share].multiplexed.lock().await;
            match &*slot {
                MultiplexedSlot::Open(sender) if !sender.is_closed() => sender.clone(),
                MultiplexedSlot::Refused(when) if when.elapsed() < ASK_AGAIN_FOR_H2 => {
                    return Ok(Multiplexed::Unsent(request));
                }
                MultiplexedSlot::Failed(when) if when.elapsed() < AFTER_FAILED_CONNECT => {
                    return Ok(Multiplexed::Unsent(request));
                }
                _ => match Box::pin(self.connect(&multiplexing.connector)).await {
                    Ok(Connected::Http2(sender)) => {
                        *slot = MultiplexedSlot::Open(sender.clone());
                        sender
                    }
                    Ok(Connected::Http1(sender)) => {
                        tracing::info!("k_server declined HTTP/2 (it offers only HTTP/1.1); forwarding over HTTP/1.1");
                        *slot = MultiplexedSlot::Refused(tokio::time::Instant::now());
                        return Ok(Multiplexed::Http1(sender, request));
                    }
                    Err(err) => {
                        tracing::debug!(error = %chromecard_http::describe_error(&err), "cannot open the HTTP/2 connection to k_server; this request tries HTTP/1.1");
                        *slot = MultiplexedSlot::Failed(tokio::time::Instant::now());
                        return Ok(Multiplexed::Unsent(request));
                    }
                },
            }
        };
        let (mut parts, body) = request.into_parts();
        // HTTP/2 sends the scheme and authority as fields of their own (the Host header,
        // the same authority, stays).
        let origin = parts.uri;
        parts.uri = absolute(&origin, multiplexing)?;
        match sender
            .try_send_request(Request::from_parts(parts, body))
            .await
        {
            Ok(response) => Ok(Multiplexed::Answered(response)),
            Err(mut err) => match err.take_message() {
                Some(unsent) => {
                    let (mut parts, body) = unsent.into_parts();
                    parts.uri = origin;
                    Ok(Multiplexed::Unsent(Request::from_parts(parts, body)))
                }
                None => Err(err.into_error().into()),
            },
        }
    }

    /// This thread's share of the connections.
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
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn connect_http1(&self) -> Result<Sender, PoolError> {
        match Box::pin(self.connect(&self.connector)).await? {
            Connected::Http1(sender) => Ok(sender),
            // The pool's own connector offers only http/1.1.
            Connected::Http2(_) => Err(PoolError::Connect(
                "k_server chose HTTP/2 although only HTTP/1.1 was offered".into(),
            )),
        }
    }

    /// A new connection through `connector` (TCP and, for https, TLS within the connect
    /// deadline) in the protocol k_server chose, with its driving task spawned.
    ///
    /// Its future holds both handshakes and is kilobytes large: callers box it, so that
    /// every request's future (moved several times per request on its way into hyper
    /// and the timeouts) does not carry that size for a step most requests never take.
    async fn connect(&self, connector: &Connector) -> Result<Connected, PoolError> {
        let io = connector
            .clone()
            .call(self.base.clone())
            .await
            .map_err(PoolError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(chromecard_http::BoxedSpawn)
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_INTERVAL)
                .handshake(io)
                .await
                .map_err(|err| PoolError::Connect(err.into()))?;
            drive(connection, "h2");
            return Ok(Connected::Http2(sender));
        }
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|err| PoolError::Connect(err.into()))?;
        drive(connection, "http/1.1");
        Ok(Connected::Http1(sender))
    }
}

/// Runs a new connection's driving task on this thread's runtime until it ends.
fn drive<C>(connection: C, protocol: &'static str)
where
    C: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, protocol, "connection to k_server ended with an error");
        }
    });
}

/// `origin` (a path and query) as an absolute URI on k_server.
fn absolute(origin: &Uri, multiplexing: &Multiplexing) -> Result<Uri, PoolError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(multiplexing.scheme.clone());
    parts.authority = Some(multiplexing.authority.clone());
    parts.path_and_query = origin.path_and_query().cloned();
    Ok(Uri::from_parts(parts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_keeps_to_http2_for_a_few_lone_requests_after_concurrent_ones() {
        let share = Share::default();
        assert!(!share.recently_busy(0), "an idle worker starts on HTTP/1.1");
        assert!(share.recently_busy(3), "company: HTTP/2");
        for n in 0..LONE_BEFORE_HTTP1 {
            assert!(share.recently_busy(0), "lone request {n} after company");
        }
        assert!(!share.recently_busy(0));
        assert!(
            !share.recently_busy(0),
            "and it stays on HTTP/1.1 while alone"
        );
        assert!(share.recently_busy(1));
    }
}
