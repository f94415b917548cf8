//! The resource room: a session's `/resource/*` request, checked (path, scope), read
//! (bounded), and forwarded to k_server by upstream.rs.

use std::time::Instant;

use chromecard_http::{read_body_limited, ApiError, HttpResponse, RequestBody, BODY_READ_TIMEOUT};
use chromecard_request::resource_name;
use http::request::Parts;

use crate::app::App;
use crate::authenticate::Authenticated;
use crate::authorise;

/// `ANY /resource/...`; `path_and_query` is what `checked_resource_path` let through.
pub async fn resource(
    app: &App,
    auth: &Authenticated<'_>,
    path_and_query: &str,
    parts: &Parts,
    body: RequestBody,
) -> Result<HttpResponse, ApiError> {
    authorise::resource(auth.session(), resource_name(parts.uri.path()))?;
    let body = read_body_limited(body, app.max_body_bytes, BODY_READ_TIMEOUT).await?;
    let started = Instant::now();
    let result = app
        .upstream
        .get()
        .forward(
            parts.method.clone(),
            path_and_query,
            &parts.headers,
            body,
            &auth.session().username,
        )
        .await;
    app.metrics.upstream_latency.observe(started.elapsed());
    let status = match &result {
        Ok(response) => {
            app.metrics.upstream_protocol.inc(match response.version() {
                http::Version::HTTP_2 => "h2",
                _ => "http/1.1",
            });
            response.status()
        }
        Err(err) => err.status,
    };
    app.metrics.forwarded.inc(status.as_str());
    result.map(|mut response| {
        // The client's hop is HTTP/1.1 whatever k_server's was.
        *response.version_mut() = http::Version::HTTP_11;
        response
    })
}
