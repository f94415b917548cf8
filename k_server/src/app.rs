//! One request's walk through k_server, each phase in one place:
//! filter (head limits) → route → authorize the hop (proxy token, user) → resource → log.

use std::sync::Arc;
use std::time::Instant;

use chromecard_hop::{validate_username, ProxyToken, PROXY_TOKEN_HEADER, USER_HEADER};
use chromecard_http::{
    check_header_limits, json_response, ApiError, ConnInfo, HeaderLimits, HttpResponse,
};
use chromecard_store::CounterStore;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

/// The resources k_server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Counter,
    WhoAmI,
    UnknownResource,
}

pub struct App {
    proxy_token: ProxyToken,
    store: Arc<CounterStore>,
}

impl App {
    pub fn new(proxy_token: ProxyToken, store: Arc<CounterStore>) -> Self {
        Self { proxy_token, store }
    }

    pub async fn handle(&self, request: Request<Incoming>, conn: Arc<ConnInfo>) -> HttpResponse {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (response, user) = match self.process(&request).await {
            Ok((response, user)) => (response, user),
            Err(err) => (err.into_response(), None),
        };
        tracing::info!(
            peer = %conn.peer,
            %method,
            %path,
            status = response.status().as_u16(),
            user = user.as_deref().unwrap_or("-"),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }

    async fn process(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(HttpResponse, Option<String>), ApiError> {
        check_header_limits(request.headers(), HeaderLimits::default())?;
        let route = route(request.uri().path()).ok_or_else(ApiError::not_found)?;
        if route == Route::Health {
            require_method(request.method(), &[Method::GET], "GET")?;
            return Ok((
                json_response(StatusCode::OK, &json!({"status": "ok"})),
                None,
            ));
        }
        // Authorise before revealing anything, even whether a resource exists.
        let user = self.authorize_hop(request)?;
        let response = match route {
            Route::Counter => self.counter(request.method(), &user).await?,
            Route::WhoAmI => {
                require_method(request.method(), &[Method::GET], "GET")?;
                whoami(request, &user)
            }
            Route::UnknownResource => return Err(ApiError::not_found()),
            Route::Health => unreachable!("answered above"),
        };
        Ok((response, Some(user)))
    }

    /// The proxy token (constant time) and the user k_proxy vouches for.
    fn authorize_hop(&self, request: &Request<Incoming>) -> Result<String, ApiError> {
        let mut tokens = request.headers().get_all(PROXY_TOKEN_HEADER).iter();
        let token = match (tokens.next(), tokens.next()) {
            (None, _) => {
                return Err(ApiError::unauthorized(
                    "missing_proxy_token",
                    "This server answers only k_proxy; the X-Proxy-Token header is missing.",
                ))
            }
            (Some(token), None) => token,
            (Some(_), Some(_)) => {
                return Err(ApiError::unauthorized(
                    "invalid_proxy_token",
                    "The X-Proxy-Token header was sent more than once.",
                ))
            }
        };
        if !self.proxy_token.verify(token.as_bytes()) {
            tracing::warn!("refused a request with a wrong proxy token");
            return Err(ApiError::unauthorized(
                "invalid_proxy_token",
                "The proxy token is wrong; k_proxy and k_server must be configured with the same token.",
            ));
        }
        let mut users = request.headers().get_all(USER_HEADER).iter();
        let user = match (users.next(), users.next()) {
            (Some(user), None) => user,
            _ => {
                return Err(ApiError::bad_request(
                    "missing_user",
                    "Exactly one X-Chromecard-User header is required.",
                ))
            }
        };
        let user = user
            .to_str()
            .ok()
            .and_then(|user| validate_username(user).ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_user",
                    "The X-Chromecard-User header is not a valid username.",
                )
            })?;
        Ok(user.to_owned())
    }

    async fn counter(&self, method: &Method, user: &str) -> Result<HttpResponse, ApiError> {
        let increment = match *method {
            Method::GET => false,
            Method::POST => true,
            _ => return Err(ApiError::method_not_allowed("GET, POST")),
        };
        let store = self.store.clone();
        // redb commits fsync; keep them off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            if increment {
                store.increment()
            } else {
                store.get()
            }
        })
        .await
        .map_err(|_| ApiError::internal("The counter task failed."))?;
        match result {
            Ok(value) => Ok(json_response(
                StatusCode::OK,
                &json!({"counter": value, "user": user}),
            )),
            Err(err) => {
                tracing::error!(error = %err, "counter store failed");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "The durable store could not complete the request; nothing was counted. Try again later.",
                ))
            }
        }
    }
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/healthz" => Some(Route::Health),
        "/resource/counter" => Some(Route::Counter),
        "/resource/whoami" => Some(Route::WhoAmI),
        p if p.starts_with("/resource/") => Some(Route::UnknownResource),
        _ => None,
    }
}

fn require_method(
    method: &Method,
    allowed: &[Method],
    allow: &'static str,
) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allow))
    }
}

/// Who k_proxy says the caller is, and which header names arrived (names only, never
/// values): lets an operator, and the tests, see what k_proxy forwards.
fn whoami(request: &Request<Incoming>, user: &str) -> HttpResponse {
    let headers: Vec<&str> = request.headers().keys().map(|name| name.as_str()).collect();
    json_response(StatusCode::OK, &json!({"user": user, "headers": headers}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/healthz"), Some(Route::Health));
        assert_eq!(route("/resource/counter"), Some(Route::Counter));
        assert_eq!(route("/resource/whoami"), Some(Route::WhoAmI));
        assert_eq!(route("/resource/other"), Some(Route::UnknownResource));
        assert_eq!(route("/resource"), None);
        assert_eq!(route("/"), None);
    }
}
