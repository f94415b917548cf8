//! The one forwarded request that is not a request: a WebSocket to k_server's
//! `/resource/<stream>/events`, on a connection of its own (never the pool: it stays
//! upgraded), with the same mutual TLS, proxy token, user and timeouts as any other.

use bytes::Bytes;
use chromecard_hop::{PROXY_TOKEN_HEADER, USER_HEADER};
use chromecard_http::ApiError;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{unavailable, Upstream};

impl Upstream {
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
                unavailable().with_cause(format!(
                    "events stream: {}",
                    chromecard_http::describe_error(&err)
                ))
            })?;
            accepted_upgrade(&response, &key)?;
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
                ApiError::upstream(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "k_server did not open the stream within {} seconds.",
                        self.response_timeout.as_secs()
                    ),
                )
            })?
    }
}

/// k_server's answer to the upgrade: 101 with the `Sec-WebSocket-Accept` our key asks for.
fn accepted_upgrade<B>(response: &http::Response<B>, key: &str) -> Result<(), ApiError> {
    use hyper_tungstenite::tungstenite::handshake::derive_accept_key;
    match response.status() {
        StatusCode::SWITCHING_PROTOCOLS => {}
        StatusCode::UNAUTHORIZED => {
            tracing::error!("k_server refused k_proxy's credentials on an events stream: check the proxy token on both");
            return Err(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                "upstream_rejected_proxy",
                "k_server refused k_proxy's credentials; the operator must check the proxy token on both.",
            ));
        }
        status => {
            return Err(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("k_server did not open the stream (it answered {status})."),
            )
            .with_cause("k_server did not open the events stream"));
        }
    }
    let accepted = response
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|accept| accept.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes());
    if !accepted {
        return Err(
            unavailable().with_cause("k_server's events answer had a wrong Sec-WebSocket-Accept")
        );
    }
    Ok(())
}
