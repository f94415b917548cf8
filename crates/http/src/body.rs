//! The request body as handlers see it, and what becomes of the part they leave unread.
//!
//! A handler often answers before it has read the body (a wrong content type, a bad name,
//! a missing token, a body over the limit). hyper then stops reading and closes the
//! connection after the answer, but the answer itself may already have gone out without
//! `Connection: close`: a client that pools connections (k_proxy's client to k_server)
//! puts the connection back, and the next request sent on it meets a closed socket (a
//! 502 for somebody else's request). So an unread remainder is settled here, when the
//! handler drops the body:
//!
//! * a remainder of known length within [`DrainLimits::max_bytes`] is read and discarded
//!   in the background (at most [`DrainLimits::timeout`]), and the connection stays
//!   usable;
//! * anything else (a chunked body, a larger one, a client still waiting for
//!   `100 Continue`) marks the answer `Connection: close`, so the client knows before it
//!   could reuse the connection; the accept loop then closes with a lingering close
//!   (`linger.rs`), so the client still reads the answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How much of a body a handler left unread is read and discarded to keep the connection.
#[derive(Debug, Clone, Copy)]
pub struct DrainLimits {
    /// Largest unread remainder (by `Content-Length`) that is drained rather than closed.
    pub max_bytes: u64,
    /// Time the remainder may take to arrive; then the connection is closed.
    pub timeout: Duration,
}

impl Default for DrainLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Set when a handler left a body unread that cannot be drained: the answer must carry
/// `Connection: close`.
#[derive(Debug, Default)]
pub(crate) struct MustClose(AtomicBool);

impl MustClose {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A request body. Reading it is reading hyper's body; dropping it unread drains or
/// closes, as the module says.
pub struct RequestBody {
    inner: Option<Incoming>,
    /// The body reported its end.
    ended: bool,
    /// The body was polled at least once (hyper sends `100 Continue` on the first poll).
    polled: bool,
    /// The client sent `Expect: 100-continue` and waits for it before sending the body.
    expect_continue: bool,
    drain: DrainLimits,
    must_close: Arc<MustClose>,
}

impl RequestBody {
    pub(crate) fn new(
        inner: Incoming,
        headers: &HeaderMap,
        drain: DrainLimits,
        must_close: Arc<MustClose>,
    ) -> Self {
        let expect_continue = headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Self {
            inner: Some(inner),
            ended: false,
            polled: false,
            expect_continue,
            drain,
            must_close,
        }
    }

    /// A body that is already complete (tests, and requests without one).
    pub fn empty() -> Self {
        Self {
            inner: None,
            ended: true,
            polled: false,
            expect_continue: false,
            drain: DrainLimits::default(),
            must_close: Arc::default(),
        }
    }

    /// What happens to the unread rest when this body is dropped now.
    fn settle(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.ended || inner.is_end_stream() {
            return;
        }
        // Reading would send `100 Continue` and invite a body nobody wants.
        if self.expect_continue && !self.polled {
            self.must_close.set();
            return;
        }
        let remaining = inner.size_hint().exact();
        let runtime = tokio::runtime::Handle::try_current();
        match (remaining, runtime) {
            (Some(remaining), Ok(runtime)) if remaining <= self.drain.max_bytes => {
                let timeout = self.drain.timeout;
                runtime.spawn(async move {
                    let mut inner = inner;
                    let drained = tokio::time::timeout(timeout, async {
                        while let Some(frame) = inner.frame().await {
                            if frame.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                    if drained.is_err() {
                        tracing::debug!(
                            "an unread request body did not arrive in time; closing the connection"
                        );
                    }
                });
            }
            _ => self.must_close.set(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.settle();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if !self.ended => inner.size_hint(),
            _ => SizeHint::with_exact(0),
        }
    }
}
