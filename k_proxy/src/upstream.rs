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

/// k_server's answers are small JSON; a larger one is a fault, not something to relay.
const MAX_UPSTREAM_BODY: usize = 1024 * 1024;

pub struct UpstreamSettings {
    pub base: Uri,
    /// None: plain HTTP on loopback (same-VM quickstart).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    pub proxy_token: ProxyToken,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Uri,
    proxy_token: HeaderValue,
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
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        let proxy_token = HeaderValue::from_str(settings.proxy_token.header_value())?;
        Ok(Self {
            client,
            base: settings.base,
            proxy_token,
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
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|_| ApiError::internal("The forwarded request could not be built."))?;
        *request.headers_mut() = rewrite_request_headers(client_headers);
        let headers = request.headers_mut();
        headers.insert(PROXY_TOKEN_HEADER, self.proxy_token.clone());
        headers.insert(
            USER_HEADER,
            HeaderValue::from_str(user)
                .map_err(|_| ApiError::internal("The session's username cannot be sent."))?,
        );

        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| {
                tracing::warn!(error = %error_chain(&err), "k_server unreachable");
                unavailable()
            })?;
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

    fn target(&self, path_and_query: &str) -> Result<Uri, ApiError> {
        let prefix = self.base.path().trim_end_matches('/');
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(format!("{prefix}{path_and_query}").parse().map_err(|_| {
            ApiError::bad_request("invalid_path", "The request path is not valid.")
        })?);
        Uri::from_parts(parts)
            .map_err(|_| ApiError::bad_request("invalid_path", "The request path is not valid."))
    }
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "k_server could not be reached (connection or TLS handshake failed); try again later.",
    )
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// The client's headers as k_server may see them: without the client's credential, without
/// hop-by-hop headers, and without any header k_proxy alone may set.
pub fn rewrite_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    for name in [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::FORWARDED,
        HeaderName::from_static(PROXY_TOKEN_HEADER),
    ] {
        headers.remove(name);
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with(OWN_HEADER_PREFIX) || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
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
}
