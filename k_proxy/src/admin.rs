//! The admin listener: `GET /metrics` in the Prometheus text format, nothing else. It
//! listens on its own address (--admin-listen), apart from the clients'.

use std::sync::Arc;

use crate::metrics::ProxyMetrics;

/// The admin listener: `GET /metrics` in the Prometheus text format, nothing else.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<ProxyMetrics>,
    settings: chromecard_http::ServeSettings,
) {
    let handler = move |request: http::Request<chromecard_http::RequestBody>, _conn| {
        let metrics = metrics.clone();
        async move {
            match (request.method(), request.uri().path()) {
                (&http::Method::GET, "/metrics") => {
                    let mut response = http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(metrics.render()),
                    ));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                }
                (_, "/metrics") => {
                    chromecard_http::ApiError::method_not_allowed("GET").into_response()
                }
                _ => chromecard_http::ApiError::not_found().into_response(),
            }
        }
    };
    // A scrape now and then needs no threads of its own.
    let settings = chromecard_http::ServeSettings {
        connection_threads: 0,
        ..settings
    };
    chromecard_http::serve(
        listener,
        None::<chromecard_http::ReloadableTls>,
        settings,
        handler,
        std::future::pending(),
    )
    .await;
}
