//! One deadline for the whole connection to k_server: TCP connect *and* TLS handshake.
//!
//! hyper-util's `HttpConnector` bounds only the TCP connect. A k_server (or anything on
//! its port) that accepts and then never completes the handshake would hold the request
//! until `--upstream-timeout` and answer 504 `upstream_timeout`, although nothing was
//! ever asked of k_server: it could not be reached, which is 502 `upstream_unavailable`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a connector so that each connection attempt fails after `limit`.
#[derive(Clone)]
pub struct ConnectDeadline<C> {
    inner: C,
    limit: Duration,
}

impl<C> ConnectDeadline<C> {
    pub fn new(inner: C, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

/// The error of a connection attempt that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("connecting to k_server (TCP and TLS handshake) took longer than {0:?}")]
pub struct ConnectTimedOut(Duration);

impl<C> Service<Uri> for ConnectDeadline<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(ConnectTimedOut(limit).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connector that never connects.
    #[derive(Clone)]
    struct Never;

    impl Service<Uri> for Never {
        type Response = ();
        type Error = std::io::Error;
        type Future = std::future::Pending<Result<(), std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_completes_fails_at_the_limit() {
        let mut connector = ConnectDeadline::new(Never, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let err = connector
            .call(Uri::from_static("https://127.0.0.1:9780"))
            .await
            .unwrap_err();
        assert!(err.is::<ConnectTimedOut>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
