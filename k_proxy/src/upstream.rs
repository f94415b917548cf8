//! The hop to k_server: one pooled keep-alive client that trusts only the chain CA and
//! presents k_proxy's certificate, the header rewrite, and the mapping of upstream faults
//! to 502/504.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chromecard_hop::{ProxyToken, OWN_HEADER_PREFIX, PROXY_TOKEN_HEADER, USER_HEADER};
use chromecard_http::{ApiError, HttpResponse};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::connect_deadline::ConnectDeadline;

/// k_server's answers are small JSON; a larger one is a fault, not something to relay.
const MAX_UPSTREAM_BODY: usize = 1024 * 1024;

/// How long an idle pooled connection to k_server is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct UpstreamSettings {
    pub base: Uri,
    /// None: plain HTTP on loopback (same-VM quickstart).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    pub proxy_token: ProxyToken,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

type HopClient = Client<ConnectDeadline<HttpsConnector<HttpConnector>>, Full<Bytes>>;

pub struct Upstream {
    client: HopClient,
    /// The same connector without a pool: the one retry of a request that k_server did
    /// not receive always goes out on a new connection (see [`retry_reason`]).
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
        let connector = match settings.tls {
            Some(tls) => {
                let name = ServerName::try_from(settings.server_name.clone()).map_err(|_| {
                    anyhow::anyhow!(
                        "--server-name {:?} is not a valid DNS name or IP address",
                        settings.server_name
                    )
                })?;
                // hyper-rustls sets ALPN itself from enable_http1() and refuses a
                // config that already names protocols.
                let mut tls = (*tls).clone();
                tls.alpn_protocols.clear();
                HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .with_server_name_resolver(FixedServerNameResolver::new(name))
                    .enable_http1()
                    .wrap_connector(http)
            }
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
                .wrap_connector(http),
        };
        let connector = ConnectDeadline::new(connector, settings.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            // Below k_server's keep-alive wait (its --header-read-timeout, 10 s by
            // default): a pooled connection that k_server is about to close would turn
            // the next request into a 502 the client cannot retry safely (an increment
            // may or may not have happened).
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(256)
            // A request that meets a pooled connection closing before a byte of it was
            // written is sent again on another connection (hyper-util's own retry; the
            // default, stated here because the forwarding relies on it).
            .retry_canceled_requests(true)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let proxy_token = HeaderValue::from_str(settings.proxy_token.header_value())?;
        let host = host_header(&settings.base);
        Ok(Self {
            client,
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
        let uri = self.target(path_and_query)?;
        let user = HeaderValue::from_str(user)
            .map_err(|_| ApiError::internal("The session's username cannot be sent."))?;
        // Built again for the one retry (the body is shared bytes).
        let build = || {
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
            Ok::<_, ApiError>(request)
        };

        let exchange = async {
            let response = match self.client.request(build()?).await {
                Ok(response) => response,
                Err(err) => match retry_reason(&method, &err) {
                    None => {
                        tracing::warn!(error = %chromecard_http::describe_error(&err), "k_server unreachable");
                        return Err(unavailable());
                    }
                    Some(reason) => {
                        tracing::info!(
                            error = %chromecard_http::describe_error(&err),
                            %method,
                            reason,
                            "k_server did not answer on a pooled connection; sending the request once more on a new one"
                        );
                        self.fresh.request(build()?).await.map_err(|err| {
                            tracing::warn!(error = %chromecard_http::describe_error(&err), "k_server unreachable (after one retry)");
                            unavailable()
                        })?
                    }
                },
            };
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_UPSTREAM_BODY)
                .collect()
                .await
                .map_err(|err| {
                    tracing::warn!(error = %err, "k_server's answer could not be read");
                    unavailable()
                })?
                .to_bytes();
            Ok::<_, ApiError>(Response::from_parts(parts, body))
        };
        let response = tokio::time::timeout(self.response_timeout, exchange)
            .await
            .map_err(|_| {
                tracing::warn!(
                    timeout_secs = self.response_timeout.as_secs(),
                    "k_server too slow"
                );
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "k_server did not answer within {} seconds.",
                        self.response_timeout.as_secs()
                    ),
                )
            })??;

        if response.status() == StatusCode::UNAUTHORIZED {
            // k_server refusing *us* is a configuration fault, not the client's: a 401 here
            // would wrongly tell the client to log in again.
            tracing::error!(
                "k_server refused k_proxy's credentials: check that both use the same proxy token"
            );
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_rejected_proxy",
                "k_server refused k_proxy's credentials; the operator must check the proxy token on both.",
            ));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Full::new(body)))
    }

    /// Opens `/resource/<stream>/events` at k_server as a WebSocket for `user`, on a
    /// connection of its own (never the pool: it stays upgraded). The request carries
    /// only what k_proxy sets (proxy token, user, Host, the upgrade): nothing of the
    /// client's. Bounded by the connect and answer timeouts like any forwarded request.
    pub async fn open_events(
        &self,
        stream: &str,
        user: &str,
        config: hyper_tungstenite::tungstenite::protocol::WebSocketConfig,
    ) -> Result<hyper_tungstenite::HyperWebsocketStream, ApiError> {
        use hyper_tungstenite::tungstenite::handshake::client::generate_key;
        use hyper_tungstenite::tungstenite::handshake::derive_accept_key;
        use hyper_tungstenite::tungstenite::protocol::Role;

        let uri = self.target(&format!("/resource/{stream}/events"))?;
        let user = HeaderValue::from_str(user)
            .map_err(|_| ApiError::internal("The session's username cannot be sent."))?;
        let key = generate_key();
        let mut request = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ApiError::internal("The forwarded request could not be built."))?;
        let headers = request.headers_mut();
        headers.insert(
            HeaderName::from_static(PROXY_TOKEN_HEADER),
            self.proxy_token.clone(),
        );
        headers.insert(HeaderName::from_static(USER_HEADER), user);
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&key).map_err(|_| ApiError::internal("bad key"))?,
        );
        let exchange = async {
            let mut response = self.fresh.request(request).await.map_err(|err| {
                tracing::warn!(error = %chromecard_http::describe_error(&err), "k_server unreachable (events)");
                unavailable()
            })?;
            match response.status() {
                StatusCode::SWITCHING_PROTOCOLS => {}
                StatusCode::UNAUTHORIZED => {
                    tracing::error!("k_server refused k_proxy's credentials on an events stream: check the proxy token on both");
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_rejected_proxy",
                        "k_server refused k_proxy's credentials; the operator must check the proxy token on both.",
                    ));
                }
                status => {
                    tracing::warn!(%status, "k_server did not open the events stream");
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unavailable",
                        format!("k_server did not open the stream (it answered {status})."),
                    ));
                }
            }
            let accepted = response
                .headers()
                .get(header::SEC_WEBSOCKET_ACCEPT)
                .is_some_and(|accept| {
                    accept.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes()
                });
            if !accepted {
                tracing::warn!("k_server's events answer had a wrong Sec-WebSocket-Accept");
                return Err(unavailable());
            }
            let upgraded = hyper::upgrade::on(&mut response).await.map_err(|err| {
                tracing::warn!(error = %err, "k_server's events stream did not upgrade");
                unavailable()
            })?;
            Ok(hyper_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Client,
                Some(config),
            )
            .await)
        };
        tokio::time::timeout(self.response_timeout, exchange)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "k_server did not open the stream within {} seconds.",
                        self.response_timeout.as_secs()
                    ),
                )
            })?
    }

    /// Readiness: k_server answers `GET /healthz` over the pooled connection within 2 s.
    pub async fn probe(&self) -> Result<(), ApiError> {
        let not_ready = |why: &str| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("k_proxy is not ready: {why}."),
            )
        };
        let request = Request::get(self.target("/healthz")?)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ApiError::internal("The readiness probe could not be built."))?;
        match tokio::time::timeout(Duration::from_secs(2), self.client.request(request)).await {
            Ok(Ok(response)) if response.status() == StatusCode::OK => Ok(()),
            Ok(Ok(response)) => Err(not_ready(&format!(
                "k_server answered {}",
                response.status()
            ))),
            Ok(Err(err)) => {
                tracing::warn!(error = %chromecard_http::describe_error(&err), "readiness: k_server unreachable");
                Err(not_ready("k_server is unreachable"))
            }
            Err(_) => Err(not_ready("k_server did not answer within 2 seconds")),
        }
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
///   byte of it went out), so k_server cannot have acted on it: any method.
/// * `idempotent`: the connection failed before an answer (closed, reset, broken pipe)
///   and the method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT,
///   DELETE), so acting on it twice is the same as once.
///
/// A POST that may have been written is never resent (an increment could count twice),
/// and a failure to connect is not retried either: it happened on a new connection
/// already, and a second attempt would only double the wait for the same 502.
fn retry_reason(method: &Method, err: &hyper_util::client::legacy::Error) -> Option<&'static str> {
    if err.is_connect() {
        return None;
    }
    let hyper_err = std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<hyper::Error>())?;
    if hyper_err.is_canceled() {
        return Some("unsent");
    }
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let connection_failed = hyper_err.is_incomplete_message()
        || hyper_err.is_closed()
        || hyper_err.is_body_write_aborted()
        || std::iter::successors(Some(hyper_err as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .any(|e| e.is::<std::io::Error>());
    (idempotent && connection_failed && !hyper_err.is_timeout()).then_some("idempotent")
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "k_server could not be reached (connection or TLS handshake failed); try again later.",
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The headers that `Connection` names: hop-by-hop too. Usually none (no allocation).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        // Bytes, not `to_str`: one non-ASCII byte in the value must not make us skip the
        // whole list and forward the headers it names.
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// Whether a client's request header may reach k_server (hop-by-hop headers aside).
fn forwardable(name: &HeaderName) -> bool {
    const DROPPED: [HeaderName; 6] = [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::FORWARDED,
    ];
    if HOP_BY_HOP.contains(name) || DROPPED.contains(name) {
        return false;
    }
    let name = name.as_str();
    name != PROXY_TOKEN_HEADER
        && !name.starts_with(OWN_HEADER_PREFIX)
        && !name.starts_with("x-forwarded-")
}

/// The client's headers as k_server may see them: without the client's credential, without
/// hop-by-hop headers, and without any header k_proxy alone may set.
///
/// Built by copying only what may cross, rather than cloning the whole map and removing
/// from it: a request with nothing to forward (the common case) allocates nothing here.
pub fn rewrite_request_headers(client: &HeaderMap) -> HeaderMap {
    let named = connection_named(client);
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        if forwardable(name) && !named.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_and_identity_never_cross() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer secret"),
            ("cookie", "session=secret"),
            ("x-proxy-token", "forged"),
            ("x-chromecard-user", "mallory"),
            ("x-chromecard-anything", "x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "evil"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
        ] {
            client.append(name, HeaderValue::from_static(value));
        }
        let forwarded = rewrite_request_headers(&client);
        let names: Vec<&str> = forwarded.keys().map(|n| n.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(forwarded.contains_key("accept"));
        assert!(forwarded.contains_key("content-type"));
    }

    #[test]
    fn headers_named_in_connection_are_dropped_even_beside_non_ascii_bytes() {
        let mut client = HeaderMap::new();
        client.append(
            "connection",
            HeaderValue::from_bytes(b"x-hop, \x80junk").unwrap(),
        );
        client.append("x-hop", HeaderValue::from_static("v"));
        client.append("accept", HeaderValue::from_static("*/*"));
        let forwarded = rewrite_request_headers(&client);
        assert!(!forwarded.contains_key("x-hop"), "{forwarded:?}");
        assert!(forwarded.contains_key("accept"));
    }

    #[test]
    fn repeated_headers_cross_in_order() {
        let mut client = HeaderMap::new();
        client.append("accept", HeaderValue::from_static("text/plain"));
        client.append("x-trace", HeaderValue::from_static("1"));
        client.append("accept", HeaderValue::from_static("application/json"));
        let forwarded = rewrite_request_headers(&client);
        let accept: Vec<_> = forwarded.get_all("accept").iter().collect();
        assert_eq!(accept, ["text/plain", "application/json"]);
        assert_eq!(forwarded.len(), 3);
    }

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
