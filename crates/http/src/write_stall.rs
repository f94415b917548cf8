//! A bound on how long a write to a client may stay blocked.
//!
//! hyper bounds the time to *receive* a request head, but not the time to *send* an
//! answer: a client that pipelines requests and never reads would hold its connection
//! (and its slot under `--max-connections`) for ever once the socket buffers are full.
//! [`WriteStallLimit`] wraps the accepted socket and fails a write, flush or shutdown
//! that has made no progress for the limit, which ends the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner` with writes that fail after `limit` without progress. Reads pass through.
pub struct WriteStallLimit<IO> {
    inner: IO,
    limit: Duration,
    /// Armed when a write first returns `Pending`; cleared by any write that completes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> WriteStallLimit<IO> {
    pub fn new(inner: IO, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Passes a finished poll through, or, while it is pending, checks the stall timer.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client read nothing for {} s; closing the connection",
                            limit.as_secs()
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteStallLimit<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStallLimit<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_fails_the_write_at_the_limit() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut limited = WriteStallLimit::new(ours, Duration::from_secs(5));
        // 64 bytes fit in the pipe; the rest blocks because nobody reads.
        let started = tokio::time::Instant::now();
        let err = limited.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let mut got = vec![0u8; 64];
        theirs.read_exact(&mut got).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut limited = WriteStallLimit::new(ours, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 16];
            while total < 256 {
                // Each read comes 4 s after the last: under the 5 s limit every time,
                // although the whole answer takes far longer than 5 s.
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            total
        });
        limited.write_all(&[1u8; 256]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 256);
    }
}
