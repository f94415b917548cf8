//! The hop to k_server: one pooled keep-alive client that trusts only the chain CA and
//! presents k_proxy's certificate, the header rewrite, and the mapping of upstream faults
//! to 502/504.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chromecard_hop::{ProxyToken, PROXY_TOKEN_HEADER, USER_HEADER};
use chromecard_http::{ApiError, HttpResponse};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

mod events;
#[cfg(test)]
mod h2_stand_in_tests;
mod pool;

use crate::connect_deadline::ConnectDeadline;
use crate::rewrite::{rewrite_request_headers, strip_hop_by_hop};
pub use pool::UpstreamHttp2;
use pool::{Multiplexing, Pool, PoolError};

/// k_server's answers are small JSON; a larger one is a fault, not something to relay.
const MAX_UPSTREAM_BODY: usize = 1024 * 1024;

/// How long an idle pooled connection to k_server is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections to k_server kept at most, per connection worker.
const MAX_IDLE_CONNECTIONS: usize = 256;

pub struct UpstreamSettings {
    pub base: Uri,
    /// None: plain HTTP on loopback (same-VM quickstart).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    pub proxy_token: ProxyToken,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The connection worker threads (`--connection-threads`), each with its own share
    /// of the pool.
    pub connection_threads: usize,
    /// `--upstream-http2`: when requests share an HTTP/2 connection (TLS only).
    pub http2: UpstreamHttp2,
}

type HopClient = Client<ConnectDeadline<HttpsConnector<HttpConnector>>, Full<Bytes>>;

pub struct Upstream {
    /// The keep-alive connections forwarded requests use (pool.rs).
    pool: Pool,
    /// The same connector without a pool: the one retry of a request that k_server did
    /// not receive always goes out on a new connection (see [`retry_reason`]), and so
    /// does the WebSocket to k_server (events.rs).
    fresh: HopClient,
    base: Uri,
    proxy_token: HeaderValue,
    /// The Host header hyper's client would format for `base` on every request, made once.
    host: Option<HeaderValue>,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        // The TLS config with the name k_server's certificate must carry, checked once
        // for both connectors below.
        let tls = match settings.tls.as_deref() {
            Some(tls) => {
                let name = ServerName::try_from(settings.server_name.clone()).map_err(|_| {
                    anyhow::anyhow!(
                        "--server-name {:?} is not a valid DNS name or IP address",
                        settings.server_name
                    )
                })?;
                Some((tls, name))
            }
            None => None,
        };
        let connector = match &tls {
            Some((tls, name)) => tls_builder(tls, name)
                .enable_http1()
                .wrap_connector(http.clone()),
            // The connector needs *some* TLS config even when every URL is http://; this
            // one trusts nothing, so it can never complete a handshake.
            None => HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .wrap_connector(http.clone()),
        };
        // HTTP/2 is chosen by ALPN, so only over TLS; its connector offers h2 first.
        let multiplexing = match (&tls, settings.http2) {
            (None, _) | (_, UpstreamHttp2::Never) => None,
            (Some((tls, name)), when) => {
                let connector = tls_builder(tls, name)
                    .enable_all_versions()
                    .wrap_connector(http);
                Some(Multiplexing {
                    when,
                    connector: ConnectDeadline::new(connector, settings.connect_timeout),
                    scheme: settings
                        .base
                        .scheme()
                        .cloned()
                        .unwrap_or(http::uri::Scheme::HTTPS),
                    authority: settings.base.authority().cloned().ok_or_else(|| {
                        anyhow::anyhow!("--server-base-url {} names no host", settings.base)
                    })?,
                })
            }
        };
        let connector = ConnectDeadline::new(connector, settings.connect_timeout);
        // The idle timeout is below k_server's keep-alive wait (its
        // --header-read-timeout, 10 s by default): a pooled connection that k_server is
        // about to close would turn the next request into a 502 the client cannot retry
        // safely (an increment may or may not have happened). A request that meets a
        // pooled connection closing before a byte of it was written is sent again on
        // another connection (pool.rs).
        let pool = Pool::new(
            connector.clone(),
            settings.base.clone(),
            settings.connection_threads,
            MAX_IDLE_CONNECTIONS,
            POOL_IDLE_TIMEOUT,
            multiplexing,
        );
        let fresh = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let proxy_token = HeaderValue::from_str(settings.proxy_token.header_value())?;
        let host = host_header(&settings.base);
        Ok(Self {
            pool,
            fresh,
            base: settings.base,
            proxy_token,
            host,
            response_timeout: settings.response_timeout,
        })
    }

    /// Forwards one request for `user` and returns k_server's answer, bounded in time and size.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        client_headers: &HeaderMap,
        body: Bytes,
        user: &str,
    ) -> Result<HttpResponse, ApiError> {
        let uri = self.origin_target(path_and_query)?;
        let user = HeaderValue::from_str(user)
            .map_err(|_| ApiError::internal("The session's username cannot be sent."))?;
        // Built again for the one retry (the body is shared bytes).
        let build = |uri: &Uri| self.request(&method, uri, client_headers, &body, &user);
        let exchange = async {
            let (response, lease) = self
                .send_with_one_retry(&method, path_and_query, &uri, build)
                .await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_UPSTREAM_BODY)
                .collect()
                .await
                .map_err(|err| unreadable_answer(&*err))?
                .to_bytes();
            // Read whole: the connection may serve the next request.
            if let Some(lease) = lease {
                lease.release();
            }
            Ok::<_, ApiError>(Response::from_parts(parts, body))
        };
        // Boxed: the exchange holds the pool's and hyper's futures (about 2 KiB), and
        // every future above this one (the handler's, which serve boxes per request)
        // would otherwise carry that size and copy it as it is built and moved.
        let response = Box::pin(tokio::time::timeout(self.response_timeout, exchange))
            .await
            .map_err(|_| self.too_slow())??;
        if response.status() == StatusCode::UNAUTHORIZED {
            // k_server refusing *us* is a configuration fault, not the client's: a 401 here
            // would wrongly tell the client to log in again.
            tracing::error!(
                "k_server refused k_proxy's credentials: check that both use the same proxy token"
            );
            return Err(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                "upstream_rejected_proxy",
                "k_server refused k_proxy's credentials; the operator must check the proxy token on both.",
            ));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Full::new(body)))
    }

    /// The request k_server gets: the client's headers less hop-by-hop and identity
    /// headers, then the proxy token, k_server's Host and the session's user.
    fn request(
        &self,
        method: &Method,
        uri: &Uri,
        client_headers: &HeaderMap,
        body: &Bytes,
        user: &HeaderValue,
    ) -> Result<Request<Full<Bytes>>, ApiError> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Full::new(body.clone()))
            .map_err(|_| ApiError::internal("The forwarded request could not be built."))?;
        *request.headers_mut() = rewrite_request_headers(client_headers);
        let headers = request.headers_mut();
        // Static names: inserting by &str would allocate a new HeaderName per request.
        headers.insert(
            HeaderName::from_static(PROXY_TOKEN_HEADER),
            self.proxy_token.clone(),
        );
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(HeaderName::from_static(USER_HEADER), user.clone());
        Ok(request)
    }

    /// Sends on the pool; a request k_server provably never got (see `retry_reason`) goes
    /// once more on a new connection, outside the pool.
    async fn send_with_one_retry(
        &self,
        method: &Method,
        path_and_query: &str,
        origin: &Uri,
        build: impl Fn(&Uri) -> Result<Request<Full<Bytes>>, ApiError>,
    ) -> Result<(Response<hyper::body::Incoming>, Option<pool::Lease<'_>>), ApiError> {
        let err = match self.pool.send(build(origin)?).await {
            Ok((response, lease)) => return Ok((response, Some(lease))),
            Err(err) => err,
        };
        let Some(reason) = retry_reason(method, &err) else {
            return Err(unavailable().with_cause(chromecard_http::describe_error(&err)));
        };
        tracing::info!(
            error = %chromecard_http::describe_error(&err),
            %method,
            reason,
            "k_server did not answer on a pooled connection; sending the request once more on a new one"
        );
        let absolute = self.target(path_and_query)?;
        match self.fresh.request(build(&absolute)?).await {
            Ok(response) => Ok((response, None)),
            Err(err) => Err(unavailable().with_cause(format!(
                "after one retry: {}",
                chromecard_http::describe_error(&err)
            ))),
        }
    }

    /// 504 when k_server does not answer within --upstream-timeout.
    fn too_slow(&self) -> ApiError {
        tracing::warn!(
            timeout_secs = self.response_timeout.as_secs(),
            "k_server too slow"
        );
        ApiError::upstream(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!(
                "k_server did not answer within {} seconds.",
                self.response_timeout.as_secs()
            ),
        )
    }

    /// Readiness: k_server answers `GET /healthz` over the pooled connection within 2 s.
    pub async fn probe(&self) -> Result<(), ApiError> {
        let not_ready = |why: &str| {
            ApiError::upstream(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("k_proxy is not ready: {why}."),
            )
        };
        let mut request = Request::get(self.origin_target("/healthz")?)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ApiError::internal("The readiness probe could not be built."))?;
        if let Some(host) = &self.host {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let exchange = async {
            let (response, lease) = self.pool.send(request).await?;
            let status = response.status();
            // Read whole (it is small), so that the connection goes back to the pool.
            if response.into_body().collect().await.is_ok() {
                lease.release();
            }
            Ok::<_, PoolError>(status)
        };
        match tokio::time::timeout(Duration::from_secs(2), exchange).await {
            Ok(Ok(StatusCode::OK)) => Ok(()),
            Ok(Ok(status)) => Err(not_ready(&format!("k_server answered {status}"))),
            Ok(Err(err)) => {
                tracing::warn!(error = %chromecard_http::describe_error(&err), "readiness: k_server unreachable");
                Err(not_ready("k_server is unreachable"))
            }
            Err(_) => Err(not_ready("k_server did not answer within 2 seconds")),
        }
    }

    /// The request target as k_server gets it on a pooled connection: origin-form (the
    /// path and query, under the base URL's path), as hyper-util's client wrote it.
    fn origin_target(&self, path_and_query: &str) -> Result<Uri, ApiError> {
        let prefix = self.base.path().trim_end_matches('/');
        let invalid = || ApiError::bad_request("invalid_path", "The request path is not valid.");
        if prefix.is_empty() {
            return Uri::try_from(path_and_query).map_err(|_| invalid());
        }
        Uri::try_from(format!("{prefix}{path_and_query}")).map_err(|_| invalid())
    }

    fn target(&self, path_and_query: &str) -> Result<Uri, ApiError> {
        let prefix = self.base.path().trim_end_matches('/');
        let mut parts = self.base.clone().into_parts();
        // Without a base path (the usual case) the path is used as it is: no joined copy.
        let joined;
        let full = if prefix.is_empty() {
            path_and_query
        } else {
            joined = format!("{prefix}{path_and_query}");
            &joined
        };
        parts.path_and_query = Some(full.parse().map_err(|_| {
            ApiError::bad_request("invalid_path", "The request path is not valid.")
        })?);
        Uri::from_parts(parts)
            .map_err(|_| ApiError::bad_request("invalid_path", "The request path is not valid."))
    }
}

/// hyper-rustls's builder over `tls` (https only, verifying `name` whatever the URL's
/// host), before the HTTP versions are chosen.
fn tls_builder(
    tls: &rustls::ClientConfig,
    name: &ServerName<'static>,
) -> HttpsConnectorBuilder<hyper_rustls::builderstates::WantsProtocols1> {
    // hyper-rustls sets ALPN itself from the versions enabled next, and refuses a config
    // that already names protocols.
    let mut tls = tls.clone();
    tls.alpn_protocols.clear();
    HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
}

/// The Host header for `base`, exactly as hyper's client sets it when none is given (the
/// port only when it is not the scheme's default), so that it is formatted once rather
/// than on every request.
fn host_header(base: &Uri) -> Option<HeaderValue> {
    let host = base.host()?;
    let secure = matches!(base.scheme_str(), Some("https" | "wss"));
    let value = match base.port_u16() {
        Some(443) if secure => host.to_owned(),
        Some(80) if !secure => host.to_owned(),
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// Why a failed exchange may be sent once more, on a new connection; `None` when it may not.
///
/// * `unsent`: hyper handed the request back unwritten (the connection closed before a
///   byte of it went out), or k_server refused its HTTP/2 stream with `REFUSED_STREAM`
///   (RFC 9113 §8.7: closed before any processing), so k_server cannot have acted on it:
///   any method.
/// * `idempotent`: the connection failed before an answer (closed, reset, broken pipe,
///   or an HTTP/2 GOAWAY) and the method is idempotent (RFC 9110 §9.2.2: GET, HEAD,
///   OPTIONS, TRACE, PUT, DELETE), so acting on it twice is the same as once.
///
/// A POST that may have been written is never resent (an increment could count twice),
/// and a failure to connect is not retried either: it happened on a new connection
/// already, and a second attempt would only double the wait for the same 502.
fn retry_reason(method: &Method, err: &PoolError) -> Option<&'static str> {
    let PoolError::Http(hyper_err) = err else {
        return None;
    };
    let causes = || {
        std::iter::successors(Some(hyper_err as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
    };
    let h2_error = causes().find_map(|e| e.downcast_ref::<h2::Error>());
    if hyper_err.is_canceled()
        || h2_error.is_some_and(|e| {
            // A stream reset by k_server, not a GOAWAY with that code (which would cover
            // streams it may have processed).
            e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM)
        })
    {
        return Some("unsent");
    }
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let connection_failed = hyper_err.is_incomplete_message()
        || hyper_err.is_closed()
        || hyper_err.is_body_write_aborted()
        || h2_error.is_some_and(|e| e.is_go_away() || e.is_io())
        || causes().any(|e| e.is::<std::io::Error>());
    (idempotent && connection_failed && !hyper_err.is_timeout()).then_some("idempotent")
}

/// 502 for an answer k_server began but k_proxy could not take whole: over
/// [`MAX_UPSTREAM_BODY`], or cut off. (k_server was reached: not "unreachable".)
fn unreadable_answer(err: &(dyn std::error::Error + 'static)) -> ApiError {
    let sentence = if err.is::<http_body_util::LengthLimitError>() {
        "k_server's answer is larger than k_proxy forwards (1 MiB)."
    } else {
        "k_server's answer was cut off before its end; try again later."
    };
    ApiError::upstream(StatusCode::BAD_GATEWAY, "upstream_unavailable", sentence)
        .with_cause(format!("k_server's answer could not be read: {err}"))
}

fn unavailable() -> ApiError {
    ApiError::upstream(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "k_server could not be reached (connection or TLS handshake failed); try again later.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_as_hyper_would_set_it() {
        let host = |uri: &str| host_header(&uri.parse().unwrap()).unwrap();
        assert_eq!(host("https://127.0.0.1:9780"), "127.0.0.1:9780");
        assert_eq!(host("https://k_server:443/base"), "k_server");
        assert_eq!(host("http://127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host("http://127.0.0.1:8780"), "127.0.0.1:8780");
        assert_eq!(host("http://localhost"), "localhost");
    }
}
