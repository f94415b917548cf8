//! The one error type every handler returns, rendered as
//! `{"error": "<snake_case_code>", "message": "<one human sentence>"}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Every response in chromecard has a fully buffered body: requests and answers are small
/// and bounded, and a buffered body lets a deadline cover the whole exchange.
pub type HttpResponse = Response<Full<Bytes>>;

/// Where a fault came from, so logs and metrics can tell a bad client from a broken
/// k_server from a full queue from our own bug. Set where the error is made: 4xx answers
/// are the client's, and every other constructor says whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong or not allowed (4xx).
    Client,
    /// The FIDO2 device or k_server failed or was too slow.
    Upstream,
    /// One of this process's own bounds was reached (a queue, the session limit, a
    /// shutdown): nothing is broken, try again later.
    Capacity,
    /// Something inside this process failed.
    Internal,
}

/// An error answer: status, stable code, human sentence, and the headers some statuses need.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fault: Fault,
    /// Why, for the log (never sent to the client): the underlying error's text.
    pub cause: Option<Box<str>>,
    allow: Option<&'static str>,
    www_authenticate: Option<Box<str>>,
    retry_after: Option<u64>,
    /// Further fields of the JSON body after `error` and `message` (e.g. a key's PIN
    /// `retries`).
    /// Boxed: most errors have none, and `ApiError` travels in every `Result`.
    fields: Option<Box<Fields>>,
}

/// The further fields of an error's JSON body.
#[derive(Debug, Clone, Default)]
struct Fields(Vec<(&'static str, serde_json::Value)>);

impl ApiError {
    /// An answer whose fault is the client's (4xx) or, for any other status, this
    /// process's own; [`ApiError::upstream`] and [`ApiError::capacity`] say otherwise.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let fault = if status.is_client_error() {
            Fault::Client
        } else {
            Fault::Internal
        };
        Self {
            status,
            code,
            message: message.into(),
            fault,
            cause: None,
            allow: None,
            www_authenticate: None,
            retry_after: None,
            fields: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with the `WWW-Authenticate: Bearer` challenge RFC 6750 asks for (§3.1): no
    /// error attribute when the request carried no credential (`missing_token`, a
    /// WebSocket upgrade without its ticket, a request to k_server without the proxy
    /// token, and a refused login, which needs none), `invalid_request` for a malformed
    /// one, `invalid_token` for a credential that does not work.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        let error = match code {
            "missing_token" | "missing_ticket" | "missing_proxy_token" => None,
            "malformed_authorization" | "malformed_cookie" => Some("invalid_request"),
            _ => Some("invalid_token"),
        };
        Self::with_challenge(code, message, error)
    }

    /// 401 for a login the gate refused: the bare challenge, since no token was involved.
    pub fn login_refused(code: &'static str, message: impl Into<String>) -> Self {
        Self::with_challenge(code, message, None)
    }

    fn with_challenge(code: &'static str, message: impl Into<String>, error: Option<&str>) -> Self {
        let mut err = Self::new(StatusCode::UNAUTHORIZED, code, message);
        err.www_authenticate = Some(
            match error {
                Some(error) => format!("Bearer realm=\"chromecard\", error=\"{error}\""),
                None => "Bearer realm=\"chromecard\"".to_string(),
            }
            .into_boxed_str(),
        );
        err
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no such endpoint.",
        )
    }

    /// 405 naming the methods the path does accept.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut err = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("This endpoint does not accept that method; it accepts {allow}."),
        );
        err.allow = Some(allow);
        err
    }

    /// k_server (or the key) failed or was too slow: 502, 503 or 504.
    pub fn upstream(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message).with_fault(Fault::Upstream)
    }

    /// 503 for a bound of our own (a queue, the session limit, shutting down).
    pub fn capacity(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).with_fault(Fault::Capacity)
    }

    /// Keeps the underlying error's text for the log.
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string().into_boxed_str());
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// Overrides the fault origin when the status alone says the wrong thing
    /// (a 401 from the FIDO2 device is the device's doing, not the client's).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Adds `Retry-After: <seconds>` (429 and 503 answers).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Adds a field to the JSON body (`error` and `message` come first and stay).
    pub fn with_field(mut self, name: &'static str, value: impl Into<serde_json::Value>) -> Self {
        if name != "error" && name != "message" {
            self.fields
                .get_or_insert_with(Default::default)
                .0
                .push((name, value.into()));
        }
        self
    }

    pub fn into_response(self) -> HttpResponse {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.clone().into());
        for (name, value) in self.fields.into_iter().flat_map(|f| f.0) {
            body.insert(name.into(), value);
        }
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.www_authenticate {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// A JSON answer. Also sets `Cache-Control: no-store`: answers carry tokens and secrets.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> HttpResponse {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        // Our own types always serialise; this keeps even that impossible path JSON.
        Err(_) => {
            br#"{"error":"internal_error","message":"The answer could not be encoded."}"#.to_vec()
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: HttpResponse) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn error_body_is_code_and_sentence() {
        let response =
            ApiError::bad_request("invalid_json", "The body is not JSON.").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_json(response).await;
        assert_eq!(body["error"], "invalid_json");
        assert_eq!(body["message"], "The body is not JSON.");
    }

    #[tokio::test]
    async fn unauthorized_carries_bearer_challenge() {
        let response = ApiError::unauthorized("invalid_token", "Unknown token.").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Bearer realm=\"chromecard\""));
        assert!(challenge.contains("error=\"invalid_token\""));
        let bare = |err: ApiError| {
            err.into_response().headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .to_owned()
        };
        for missing in ["missing_token", "missing_ticket", "missing_proxy_token"] {
            assert_eq!(
                bare(ApiError::unauthorized(missing, "None sent.")),
                "Bearer realm=\"chromecard\"",
                "{missing}"
            );
        }
        assert_eq!(
            bare(ApiError::login_refused("touch_timeout", "No touch.")),
            "Bearer realm=\"chromecard\""
        );
        assert!(
            bare(ApiError::unauthorized("malformed_authorization", "Bad."))
                .ends_with("error=\"invalid_request\"")
        );
    }

    #[test]
    fn method_not_allowed_names_allowed_methods() {
        let response = ApiError::method_not_allowed("POST").into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }

    #[tokio::test]
    async fn fault_is_set_where_the_error_is_made() {
        assert_eq!(ApiError::not_found().fault, Fault::Client);
        let upstream = ApiError::upstream(StatusCode::BAD_GATEWAY, "upstream_unavailable", "x");
        assert_eq!(upstream.fault, Fault::Upstream);
        assert_eq!(ApiError::internal("x").fault, Fault::Internal);
        // A 503 of our own is not k_server's doing (it used to be guessed from the status).
        let full = ApiError::capacity("login_queue_full", "x");
        assert_eq!(
            (full.status, full.fault),
            (StatusCode::SERVICE_UNAVAILABLE, Fault::Capacity)
        );
        let bare = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "x", "y");
        assert_eq!(bare.fault, Fault::Internal);
        let with = ApiError::internal("x").with_cause("disk full");
        assert_eq!(with.cause.as_deref(), Some("disk full"));
        let body = body_json(with.into_response()).await;
        assert!(!body.to_string().contains("disk full"), "{body}");
    }
}
