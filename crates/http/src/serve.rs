//! The accept loop: TLS (when configured), HTTP/1.1 with bounded waits (or HTTP/2 where
//! the TLS configuration offers it and the client chose it), a cap on open connections,
//! and a graceful drain when the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::body::MustClose;
use crate::log_limit::OncePerSecond;
use crate::workers::ConnectionWorkers;
use crate::{DrainLimits, HttpResponse, Linger, LingerLimits, RequestBody, WriteStallLimit};

/// Lines a client can cause per connection: at most one a second each (log_limit.rs).
static LIMIT_REACHED: OncePerSecond = OncePerSecond::new();
static HANDSHAKE_REFUSED: OncePerSecond = OncePerSecond::new();
static HANDSHAKE_TIMED_OUT: OncePerSecond = OncePerSecond::new();

/// The ALPN name of HTTP/2: a TLS connection that chose it is served as HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// What a handler may know about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The verified end-entity client certificate, when the listener asked for one.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// Bounds of the accept loop. Each has a safe default.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// Time allowed for a client to send a complete request head (slowloris bound); also
    /// how long an idle keep-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// Time a write to the client may make no progress (a client that stops reading)
    /// before the connection is closed.
    pub write_stall_timeout: Duration,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Connections served at once; beyond it new connections are closed at accept.
    pub max_connections: usize,
    /// After shutdown starts, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// hyper's read buffer, which also caps the request head. Kept above the JSON
    /// 431 limit so that clients normally get the JSON answer.
    pub max_buf_size: usize,
    /// What a handler leaves unread of a request body is drained within these bounds
    /// (the connection stays usable), or the answer says `Connection: close` (body.rs).
    pub drain: DrainLimits,
    /// The lingering close after an answer that ends the connection (linger.rs).
    pub linger: LingerLimits,
    /// Connection worker threads (workers.rs): each accepted connection lives on one of
    /// them. 0 serves connections on the caller's runtime instead.
    pub connection_threads: usize,
    /// Requests one HTTP/2 connection may have in flight at once (served only where the
    /// TLS configuration offers `h2`: k_server's listener). More wait in the client.
    pub http2_max_streams: u32,
}

impl ServeSettings {
    /// Sizes hyper's read buffer for a JSON 431 limit of `max_header_bytes`: hyper's own
    /// (bare) refusal must sit above ours.
    pub fn with_header_limit(mut self, max_header_bytes: usize) -> Self {
        self.max_buf_size = (max_header_bytes * 2).max(64 * 1024);
        self
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(10),
            max_buf_size: 64 * 1024,
            drain: DrainLimits::default(),
            linger: LingerLimits::default(),
            connection_threads: 0,
            http2_max_streams: 256,
        }
    }
}

/// A TLS acceptor that can be replaced while serving (SIGHUP reload): each new connection
/// takes the current one; connections already open keep theirs.
#[derive(Clone)]
pub struct ReloadableTls(Arc<std::sync::RwLock<TlsAcceptor>>);

impl ReloadableTls {
    pub fn new(acceptor: TlsAcceptor) -> Self {
        Self(Arc::new(std::sync::RwLock::new(acceptor)))
    }

    pub fn current(&self) -> TlsAcceptor {
        match self.0.read() {
            Ok(acceptor) => acceptor.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, acceptor: TlsAcceptor) {
        match self.0.write() {
            Ok(mut current) => *current = acceptor,
            Err(poisoned) => *poisoned.into_inner() = acceptor,
        }
    }
}

impl From<TlsAcceptor> for ReloadableTls {
    fn from(acceptor: TlsAcceptor) -> Self {
        Self::new(acceptor)
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits at most
/// `drain_timeout` for open connections to finish their current request.
pub async fn serve<H, F, T>(
    listener: TcpListener,
    tls: Option<T>,
    settings: ServeSettings,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
    T: Into<ReloadableTls>,
{
    let tls: Option<ReloadableTls> = tls.map(Into::into);
    // Each connection holds a receiver until it ends; the drain waits for all of them.
    // (hyper-util's GracefulShutdown cannot watch a connection that allows upgrades.)
    let (drain_tx, drain_rx) = watch::channel(());
    // Set when shutdown starts: connections that never made a request close at once
    // instead of holding the drain up until their header-read timeout.
    let (stopping_tx, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_buf_size)
        // Above the JSON 431 limit (100 fields), so clients normally get our answer.
        .max_headers(256)
        .keep_alive(true);
    let http = Arc::new(http);
    let spawner = match settings.connection_threads {
        0 => Spawner::Ambient,
        threads => match ConnectionWorkers::start("conn", threads) {
            Ok(workers) => Spawner::Workers(workers),
            Err(err) => {
                // Still served, on the caller's runtime: slower, not less safe.
                tracing::warn!(error = %err, threads, "cannot start the connection worker threads; serving on the main runtime");
                Spawner::Ambient
            }
        },
    };

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(left_out) = LIMIT_REACHED.allow() {
                tracing::warn!(%peer, limit = settings.max_connections, left_out, "connection limit reached; closing new connection (left_out: like lines not logged since the last)");
            }
            drop(stream);
            continue;
        };
        let watcher = drain_rx.clone();
        let mut stopping = stopping.clone();
        let http = http.clone();
        let handler = handler.clone();
        let tls = tls.as_ref().map(ReloadableTls::current);
        spawner.spawn_connection(stream, peer, move |mut stream| async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            // One bound for the first byte and the handshake together.
            let handshake_by = tokio::time::Instant::now() + settings.tls_handshake_timeout;
            if tls.is_some() {
                // Like the handshake, not waited for once shutdown has started.
                let plain = tokio::select! {
                    answered = crate::plain_on_tls::answered(
                        &mut stream,
                        settings.tls_handshake_timeout,
                        peer,
                    ) => answered,
                    () = stopped(&mut stopping) => return,
                };
                if plain {
                    return;
                }
            }
            // Under TLS too: the lingering close reads and discards raw bytes after the
            // close_notify, below the TLS layer.
            let stream = Linger::new(
                WriteStallLimit::new(stream, settings.write_stall_timeout),
                settings.linger,
            );
            match tls {
                None => {
                    let info = Arc::new(ConnInfo {
                        peer,
                        tls: false,
                        client_cert: None,
                    });
                    serve_connection(
                        &http,
                        watcher,
                        stopping,
                        stream,
                        info,
                        handler,
                        settings.drain,
                    )
                    .await;
                }
                Some(acceptor) => {
                    let Some(stream) = handshake(
                        &acceptor,
                        stream,
                        handshake_by.saturating_duration_since(tokio::time::Instant::now()),
                        &mut stopping,
                        peer,
                    )
                    .await
                    else {
                        return;
                    };
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.clone().into_owned());
                    let info = Arc::new(ConnInfo {
                        peer,
                        tls: true,
                        client_cert,
                    });
                    if stream.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
                        // Boxed: only k_proxy's few connections to k_server take this
                        // branch, and its larger future would otherwise size every
                        // connection's task.
                        Box::pin(serve_connection_h2(
                            &settings, watcher, stopping, stream, info, handler,
                        ))
                        .await;
                        return;
                    }
                    serve_connection(
                        &http,
                        watcher,
                        stopping,
                        stream,
                        info,
                        handler,
                        settings.drain,
                    )
                    .await;
                }
            }
        });
    }

    drop(listener);
    let _ = stopping_tx.send(true);
    tracing::info!("shutting down: no longer accepting; draining open connections");
    drop(drain_rx);
    tokio::select! {
        () = drain_tx.closed() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.drain_timeout) => {
            tracing::warn!(timeout_secs = settings.drain_timeout.as_secs(), "drain timed out; closing remaining connections");
        }
    }
    // With workers: what is left on them is cancelled as they stop.
    drop(spawner);
}

/// Where an accepted connection is served.
enum Spawner {
    /// As a task of the runtime `serve` runs on.
    Ambient,
    /// On a connection worker thread, in turn.
    Workers(ConnectionWorkers),
}

impl Spawner {
    fn spawn_connection<S, F>(&self, stream: TcpStream, peer: SocketAddr, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            Spawner::Ambient => {
                tokio::spawn(serve(stream));
            }
            Spawner::Workers(workers) => {
                // The socket leaves this runtime's reactor and joins the worker's.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%peer, error = %err, "cannot hand the connection to a worker; closing it");
                        return;
                    }
                };
                workers.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(err) => {
                            tracing::warn!(%peer, error = %err, "a worker cannot take the connection; closing it");
                        }
                    }
                });
            }
        }
    }
}

async fn serve_connection<IO, H, F>(
    http: &http1::Builder,
    // Held until the connection ends: the drain waits for it.
    _watcher: watch::Receiver<()>,
    mut stopping: watch::Receiver<bool>,
    io: IO,
    info: Arc<ConnInfo>,
    handler: H,
    drain: DrainLimits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let peer = info.peer;
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let must_close = Arc::new(MustClose::default());
        // Boxed once here: hyper moves the service's future (into its dispatcher, and
        // through this wrapper) several times per request, and a handler's future is as
        // large as its largest state (kilobytes); a box moves as a pointer.
        let response = Box::pin(handler(
            bounded(request, drain, must_close.clone()),
            info.clone(),
        ));
        async move {
            let mut response = response.await;
            // The handler left a body unread that cannot be drained: say so in this
            // answer, so that no client reuses a connection that is about to close.
            if must_close.get() {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // With upgrades: a WebSocket answer (101) hands the connection to the handler's task,
    // which then owns it (and its own shutdown).
    let connection = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = &mut connection => result,
        () = stopped(&mut stopping) => {
            // hyper's graceful shutdown closes only connections idle *between* requests;
            // one that never sent a complete request head (fresh, slow or partial) would
            // keep the drain waiting until its header-read timeout. Close it now.
            if !started.load(Ordering::Relaxed) {
                return;
            }
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Timeouts and resets by clients are routine; they are not our errors.
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// One HTTP/2 connection (k_server's listener, where only a peer with a client
/// certificate from the chain CA gets this far: k_proxy multiplexing its requests).
///
/// The same handler and request body bounds as HTTP/1.1. What differs: at most
/// `http2_max_streams` requests at once; a head (all header fields) no larger than
/// HTTP/1.1's read buffer; a peer that stops answering pings is dropped; and the drain
/// sends GOAWAY, lets the streams already open finish and ignores new ones (k_proxy's
/// client, on the GOAWAY, hands back what it had not sent yet, which then goes over
/// HTTP/1.1). An unread request body ends its own stream, not the connection, so no
/// `Connection: close` here.
async fn serve_connection_h2<IO, H, F>(
    settings: &ServeSettings,
    // Held until the connection ends: the drain waits for it.
    _watcher: watch::Receiver<()>,
    mut stopping: watch::Receiver<bool>,
    io: IO,
    info: Arc<ConnInfo>,
    handler: H,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let peer = info.peer;
    let drain = settings.drain;
    let service = service_fn(move |request: Request<Incoming>| {
        let head = request.method() == Method::HEAD;
        // Boxed for the same reason as in serve_connection.
        let response = Box::pin(handler(
            bounded(request, drain, Arc::default()),
            info.clone(),
        ));
        async move {
            let mut response = response.await;
            // HTTP/1.1 in hyper drops the body of an answer to HEAD; HTTP/2 would send it
            // as DATA, which a HEAD answer must not have (RFC 9110 §9.3.2): the client
            // (k_proxy) fails the stream, and a client's HEAD became k_proxy's 502.
            if head {
                *response.body_mut() = Default::default();
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut http = http2::Builder::new(crate::BoxedSpawn);
    http.timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        .max_header_list_size(u32::try_from(settings.max_buf_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(settings.header_read_timeout))
        .keep_alive_timeout(settings.header_read_timeout);
    let connection = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = &mut connection => result,
        () = stopped(&mut stopping) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "HTTP/2 connection ended with an error");
    }
}

/// The request as a handler gets it: hyper's body behind our bounds (`drain`), with
/// `must_close` set when what the handler leaves unread cannot be drained.
fn bounded(
    request: Request<Incoming>,
    drain: DrainLimits,
    must_close: Arc<MustClose>,
) -> Request<RequestBody> {
    let (parts, body) = request.into_parts();
    let body = RequestBody::new(body, &parts.headers, drain, must_close);
    Request::from_parts(parts, body)
}

/// The TLS handshake of a new connection within `deadline`: the stream, or `None` when
/// the handshake is refused, too slow, or interrupted by shutdown (a handshake in
/// progress has no request to finish). Its own function, so that the handshake's state
/// is not kept beside the connection's for as long as the connection is served.
async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
    deadline: Duration,
    stopping: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(deadline, acceptor.accept(stream)) => outcome,
        () = stopped(stopping) => return None,
    };
    match outcome {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            if let Some(left_out) = HANDSHAKE_REFUSED.allow() {
                tracing::info!(%peer, error = %err, left_out, "TLS handshake refused");
            }
            None
        }
        Err(_) => {
            if let Some(left_out) = HANDSHAKE_TIMED_OUT.allow() {
                tracing::info!(%peer, left_out, "TLS handshake timed out");
            }
            None
        }
    }
}

/// Resolves once shutdown has started (or the accept loop is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
