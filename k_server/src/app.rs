//! One request's walk through k_server, each phase in one place:
//! filter (head limits) → authorize the peer (--allow-client) → route → authorize the
//! hop (proxy token, user) → resource → log.

use std::sync::Arc;
use std::time::Instant;

use chromecard_hop::{validate_username, ProxyToken, PROXY_TOKEN_HEADER, USER_HEADER};
use chromecard_http::{
    check_header_limits, json_response, read_body_limited, require_json, require_method, ApiError,
    ConnInfo, HeaderLimits, HttpResponse, RequestBody, Slot, BODY_READ_TIMEOUT,
};
use chromecard_store::{
    validate_secret_name, Refused, Store, StoreError, WriteError, WriteOp, WriteOutcome, Writer,
    MAX_SECRET_BYTES,
};
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::peer::AllowList;

/// Largest request body: a secret's JSON body, `{"value": "..."}`, with room for the
/// value written entirely in escapes (a control byte is six bytes as `\u0001`), so that a
/// value within [`MAX_SECRET_BYTES`] is never refused for how the client encoded it.
const MAX_BODY_BYTES: usize = 6 * MAX_SECRET_BYTES + 1024;
/// Request heads k_server takes: k_proxy's own bound (100 fields, 16 KiB by default) plus
/// room for what k_proxy adds (proxy token, user, Host), so that a request k_proxy
/// accepted is not refused one hop later with a 431 the client cannot make sense of.
const FORWARDED_HEAD_LIMITS: HeaderLimits = HeaderLimits {
    max_total_bytes: 32 * 1024,
    max_count: 128,
};

/// The resources k_server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Counter,
    WhoAmI,
    /// `/resource/secrets`: the caller's secret names.
    Secrets,
    /// `/resource/secrets/<name>` (the name is not checked yet).
    Secret(&'a str),
    UnknownResource,
}

pub struct App {
    /// Replaced whole on SIGHUP; a request checks against the one current when it arrived.
    proxy_token: Slot<ProxyToken>,
    store: Arc<Store>,
    writer: Writer,
    allow: AllowList,
    /// Live events for k_proxy's WebSockets (events.rs).
    events: crate::events::Events,
}

impl App {
    pub fn new(
        proxy_token: ProxyToken,
        store: Arc<Store>,
        writer: Writer,
        allow: AllowList,
    ) -> Self {
        Self {
            proxy_token: Slot::new(proxy_token),
            store,
            writer,
            allow,
            events: crate::events::Events::default(),
        }
    }

    /// Swaps in a reloaded proxy token (SIGHUP).
    pub fn replace_proxy_token(&self, token: ProxyToken) {
        self.proxy_token.replace(token);
    }

    fn proxy_token(&self) -> Arc<ProxyToken> {
        self.proxy_token.get()
    }

    pub async fn handle(&self, request: Request<RequestBody>, conn: Arc<ConnInfo>) -> HttpResponse {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut user = None;
        let response = match self.process(request, &conn, &mut user).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        };
        chromecard_http::access_line(
            conn.peer,
            &method,
            &path,
            response.status(),
            user.as_deref(),
            started.elapsed(),
        );
        response
    }

    async fn process(
        &self,
        request: Request<RequestBody>,
        conn: &ConnInfo,
        user: &mut Option<String>,
    ) -> Result<HttpResponse, ApiError> {
        check_header_limits(request.headers(), FORWARDED_HEAD_LIMITS)?;
        // Before anything else, even /healthz: a k_proxy that is not on the list gets
        // nothing from this server.
        self.authorize_peer(conn)?;
        let path = request.uri().path().to_owned();
        let route = route(&path).ok_or_else(ApiError::not_found)?;
        if route == Route::Health {
            require_method(request.method(), &[Method::GET], "GET")?;
            return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
        }
        // Authorise before revealing anything, even whether a resource exists.
        let who = self.authorize_hop(&request)?;
        *user = Some(who.clone());
        let user = who.as_str();
        if let Some(stream) = crate::events::Stream::of(&path) {
            if hyper_tungstenite::is_upgrade_request(&request) {
                require_method(request.method(), &[Method::GET], "GET")?;
                // Subscribed first: an increment while the value is read is not missed.
                let subscription = self.events.subscribe();
                let counter = match stream {
                    crate::events::Stream::Counter => Some(self.read_counter().await?),
                    crate::events::Stream::Secrets => None,
                };
                return self
                    .events
                    .serve(request, stream, user, subscription, counter);
            }
        }
        match route {
            Route::Counter => self.counter(request.method(), user).await,
            Route::WhoAmI => {
                require_method(request.method(), &[Method::GET], "GET")?;
                Ok(whoami(&request, user))
            }
            Route::Secrets => {
                require_method(request.method(), &[Method::GET], "GET")?;
                self.list_secrets(user).await
            }
            Route::Secret(name) => self.secret(request, user, name).await,
            Route::UnknownResource => Err(ApiError::not_found()),
            Route::Health => unreachable!("answered above"),
        }
    }

    /// `--allow-client`: the verified client certificate must carry an allowed name.
    fn authorize_peer(&self, conn: &ConnInfo) -> Result<(), ApiError> {
        if self.allow.is_empty() {
            return Ok(());
        }
        match self
            .allow
            .check(conn.client_cert.as_ref().map(|cert| cert.as_ref()))
        {
            Ok(_) => Ok(()),
            Err(refusal) => {
                tracing::warn!(
                    peer = %conn.peer,
                    reason = %refusal,
                    allowed = ?self.allow.names(),
                    "refused a client whose certificate is not on --allow-client"
                );
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "client_not_allowed",
                    "This k_proxy's client certificate is not on k_server's --allow-client list.",
                ))
            }
        }
    }

    /// The proxy token (constant time) and the user k_proxy vouches for.
    fn authorize_hop(&self, request: &Request<RequestBody>) -> Result<String, ApiError> {
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
        if !self.proxy_token().verify(token.as_bytes()) {
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
        let value = match *method {
            Method::GET => self.read_counter().await?,
            // Answered only after the transaction holding it was committed to disk.
            Method::POST => {
                let value = self.writer.increment().await.map_err(write_error)?;
                self.events.counter(value);
                value
            }
            _ => return Err(ApiError::method_not_allowed("GET, POST")),
        };
        Ok(json_response(
            StatusCode::OK,
            &json!({"counter": value, "user": user}),
        ))
    }

    async fn list_secrets(&self, user: &str) -> Result<HttpResponse, ApiError> {
        let owner = user.to_owned();
        let names = self.read(move |store| store.secret_names(&owner)).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"user": user, "names": names}),
        ))
    }

    /// GET, PUT or DELETE one of the caller's secrets. Another user's secret of the
    /// same name is a different secret: the store is keyed by (user, name).
    async fn secret(
        &self,
        request: Request<RequestBody>,
        user: &str,
        name: &str,
    ) -> Result<HttpResponse, ApiError> {
        const ALLOW: &str = "GET, PUT, DELETE";
        let method = request.method().clone();
        if ![Method::GET, Method::PUT, Method::DELETE].contains(&method) {
            return Err(ApiError::method_not_allowed(ALLOW));
        }
        let name = validate_secret_name(name).map_err(refused_error)?;
        match method {
            Method::GET => {
                let (owner, key) = (user.to_owned(), name.to_owned());
                let value = self
                    .read(move |store| store.secret(&owner, &key))
                    .await?
                    .ok_or_else(secret_not_found)?;
                let value = String::from_utf8(value)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"user": user, "name": name, "value": value}),
                ))
            }
            Method::PUT => {
                require_json(request.headers(), "the secret")?;
                let body =
                    read_body_limited(request.into_body(), MAX_BODY_BYTES, BODY_READ_TIMEOUT)
                        .await?;
                let value = parse_secret_body(&body)?;
                let bytes = value.len();
                let op = WriteOp::PutSecret {
                    user: user.to_owned(),
                    name: name.to_owned(),
                    value: value.into_bytes(),
                };
                let created = match self.writer.submit(op).await.map_err(write_error)? {
                    WriteOutcome::SecretStored { created } => created,
                    other => return Err(unexpected(other)),
                };
                if created {
                    self.events.secret(user, name, true);
                }
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(
                    status,
                    &json!({"user": user, "name": name, "created": created, "bytes": bytes}),
                ))
            }
            _ => {
                let op = WriteOp::DeleteSecret {
                    user: user.to_owned(),
                    name: name.to_owned(),
                };
                match self.writer.submit(op).await.map_err(write_error)? {
                    WriteOutcome::SecretDeleted { existed: true } => {
                        self.events.secret(user, name, false);
                        Ok(json_response(
                            StatusCode::OK,
                            &json!({"user": user, "name": name, "deleted": true}),
                        ))
                    }
                    WriteOutcome::SecretDeleted { existed: false } => Err(secret_not_found()),
                    other => Err(unexpected(other)),
                }
            }
        }
    }

    /// The counter: as last committed when the store knows it (no transaction, no
    /// thread hop: the common case), else read from the file like any other read.
    async fn read_counter(&self) -> Result<u64, ApiError> {
        match self.store.committed_counter() {
            Some(value) => Ok(value),
            None => self.read(|store| store.counter()).await,
        }
    }

    /// Runs a read on a blocking thread (redb reads may touch the disk).
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|_| ApiError::internal("The store task failed."))?
            .map_err(|err| match err {
                StoreError::Refused(refused) => refused_error(refused),
                err => store_unavailable(&err),
            })
    }
}

fn write_error(err: WriteError) -> ApiError {
    match err {
        WriteError::Refused(refused) => refused_error(refused),
        WriteError::Store(err) => store_unavailable(&err),
    }
}

fn store_unavailable(err: &StoreError) -> ApiError {
    tracing::error!(error = %err, "the store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "The durable store could not confirm the write: it may or may not have reached the disk (a failed commit can still land). Read the value back before trying again.",
    )
}

fn refused_error(refused: Refused) -> ApiError {
    match refused {
        Refused::InvalidName => ApiError::bad_request(
            "invalid_name",
            format!("The secret name is not valid: {refused}."),
        ),
        Refused::ValueTooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("The secret value is too large: {refused}."),
        ),
        Refused::TooManySecrets { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_secrets",
            format!("No room for another secret: {refused}."),
        ),
        Refused::CounterOverflow => {
            tracing::error!("the counter is at its maximum");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "The counter is at its maximum; nothing was counted.",
            )
        }
        other => ApiError::internal(format!("The store refused the write: {other}.")),
    }
}

fn secret_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "secret_not_found",
        "You have no secret by that name.",
    )
}

fn unexpected(outcome: WriteOutcome) -> ApiError {
    tracing::error!(
        ?outcome,
        "the store answered a write with the wrong kind of outcome"
    );
    ApiError::internal("The store answered unexpectedly.")
}

/// `{"value": "<string>"}` → the value, at most [`MAX_SECRET_BYTES`] bytes.
fn parse_secret_body(body: &[u8]) -> Result<String, ApiError> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "The body is not valid JSON."))?;
    let invalid = || {
        ApiError::bad_request(
            "invalid_body",
            r#"The body must be {"value": "<string>"} and nothing else."#,
        )
    };
    let Value::Object(mut fields) = parsed else {
        return Err(invalid());
    };
    if fields.len() != 1 {
        return Err(invalid());
    }
    let Some(Value::String(value)) = fields.remove("value") else {
        return Err(invalid());
    };
    if value.len() > MAX_SECRET_BYTES {
        return Err(refused_error(Refused::ValueTooLarge {
            limit: MAX_SECRET_BYTES,
        }));
    }
    Ok(value)
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/healthz" => Some(Route::Health),
        "/resource/counter" => Some(Route::Counter),
        "/resource/whoami" => Some(Route::WhoAmI),
        "/resource/secrets" => Some(Route::Secrets),
        p => match p.strip_prefix("/resource/secrets/") {
            Some(name) => Some(Route::Secret(name)),
            None if p.starts_with("/resource/") => Some(Route::UnknownResource),
            None => None,
        },
    }
}

/// Who k_proxy says the caller is, and which header names arrived (names only, never
/// values): lets an operator, and the tests, see what k_proxy forwards.
fn whoami(request: &Request<RequestBody>, user: &str) -> HttpResponse {
    let headers: Vec<&str> = request.headers().keys().map(|name| name.as_str()).collect();
    json_response(StatusCode::OK, &json!({"user": user, "headers": headers}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderMap};

    #[test]
    fn routes() {
        assert_eq!(route("/healthz"), Some(Route::Health));
        assert_eq!(route("/resource/counter"), Some(Route::Counter));
        assert_eq!(route("/resource/whoami"), Some(Route::WhoAmI));
        assert_eq!(route("/resource/other"), Some(Route::UnknownResource));
        assert_eq!(route("/resource/secrets"), Some(Route::Secrets));
        assert_eq!(route("/resource/secrets/db"), Some(Route::Secret("db")));
        assert_eq!(route("/resource/secrets/"), Some(Route::Secret("")));
        assert_eq!(route("/resource/secrets/a/b"), Some(Route::Secret("a/b")));
        assert_eq!(route("/resource/secretsx"), Some(Route::UnknownResource));
        assert_eq!(route("/resource"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn secret_body_is_exactly_one_string_value() {
        assert_eq!(
            parse_secret_body(br#"{"value":"s3cr\u00e9t"}"#).unwrap(),
            "s3cr\u{e9}t"
        );
        assert_eq!(parse_secret_body(br#"{"value":""}"#).unwrap(), "");
        for (body, code) in [
            (&br#"not json"#[..], "invalid_json"),
            (br#"{"value":1}"#, "invalid_body"),
            (br#"{"value":"a","extra":1}"#, "invalid_body"),
            (br#"["value"]"#, "invalid_body"),
            (br#"{}"#, "invalid_body"),
        ] {
            assert_eq!(parse_secret_body(body).unwrap_err().code, code);
        }
        let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_SECRET_BYTES + 1));
        let err = parse_secret_body(big.as_bytes()).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
        );
        let max = format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_SECRET_BYTES));
        assert_eq!(
            parse_secret_body(max.as_bytes()).unwrap().len(),
            MAX_SECRET_BYTES
        );
        assert!(max.len() <= MAX_BODY_BYTES);
        // The same value, every byte escaped, is still a body k_server reads.
        let escaped = format!(r#"{{"value":"{}"}}"#, "\\u0001".repeat(MAX_SECRET_BYTES));
        assert!(escaped.len() <= MAX_BODY_BYTES);
        assert_eq!(
            parse_secret_body(escaped.as_bytes()).unwrap().len(),
            MAX_SECRET_BYTES
        );
    }

    #[test]
    fn json_content_type_is_required_for_put() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            require_json(&headers, "the secret").unwrap_err().code,
            "unsupported_media_type"
        );
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(require_json(&headers, "the secret").is_err());
        headers.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(require_json(&headers, "the secret").is_ok());
    }

    #[test]
    fn store_refusals_map_to_client_errors() {
        let cases = [
            (Refused::InvalidName, 400, "invalid_name"),
            (Refused::ValueTooLarge { limit: 1 }, 413, "value_too_large"),
            (
                Refused::TooManySecrets { limit: 1 },
                409,
                "too_many_secrets",
            ),
        ];
        for (refused, status, code) in cases {
            let err = refused_error(refused);
            assert_eq!((err.status.as_u16(), err.code), (status, code));
        }
        let err = write_error(WriteError::Store(Arc::new(StoreError::WriterStopped)));
        assert_eq!((err.status.as_u16(), err.code), (503, "store_unavailable"));
    }
}
