//! A lingering close, as nginx's `lingering_close`.
//!
//! When a server answers before it has read the whole request (a 413 while the client is
//! still uploading) and then closes, the kernel answers the bytes still arriving with a
//! reset, and a reset can reach the client before it read the answer: the client sees
//! "connection reset" instead of its 413. So when hyper shuts a connection down after an
//! answer, [`Linger`] first shuts down the write side (the answer is complete, the client
//! reads EOF after it), then reads and discards what the client still sends, until the
//! client closes its side or the bounds are reached, and only then lets the socket close.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Bounds of one lingering close.
#[derive(Debug, Clone, Copy)]
pub struct LingerLimits {
    /// Longest the whole lingering close may take (nginx: `lingering_time`).
    pub total: Duration,
    /// Longest wait for more bytes from the client (nginx: `lingering_timeout`).
    pub idle: Duration,
    /// Most bytes read and discarded.
    pub max_bytes: u64,
}

impl Default for LingerLimits {
    fn default() -> Self {
        Self {
            total: Duration::from_secs(5),
            idle: Duration::from_secs(2),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

enum State {
    Open,
    /// The write side is being shut down.
    ShuttingDown,
    /// Reading and discarding until EOF or a bound.
    Lingering {
        total: Pin<Box<Sleep>>,
        idle: Pin<Box<Sleep>>,
        discarded: u64,
    },
    Closed,
}

/// `inner` whose `poll_shutdown` lingers (see the module). Reads and writes pass through.
pub struct Linger<IO> {
    inner: IO,
    limits: LingerLimits,
    state: State,
}

impl<IO> Linger<IO> {
    pub fn new(inner: IO, limits: LingerLimits) -> Self {
        Self {
            inner,
            limits,
            state: State::Open,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Linger<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => this.state = State::ShuttingDown,
                State::ShuttingDown => {
                    if let Err(err) = std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))
                    {
                        this.state = State::Closed;
                        return Poll::Ready(Err(err));
                    }
                    this.state = State::Lingering {
                        total: Box::pin(tokio::time::sleep(this.limits.total)),
                        idle: Box::pin(tokio::time::sleep(this.limits.idle)),
                        discarded: 0,
                    };
                }
                State::Lingering {
                    total,
                    idle,
                    discarded,
                } => {
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        // EOF or an error: the client is done; nothing more to protect.
                        Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                            this.state = State::Closed
                        }
                        Poll::Ready(Err(_)) => this.state = State::Closed,
                        Poll::Ready(Ok(())) => {
                            *discarded += buf.filled().len() as u64;
                            if *discarded >= this.limits.max_bytes {
                                this.state = State::Closed;
                            } else {
                                let next = tokio::time::Instant::now() + this.limits.idle;
                                idle.as_mut().reset(next);
                            }
                        }
                        Poll::Pending => {
                            if total.as_mut().poll(cx).is_ready()
                                || idle.as_mut().poll(cx).is_ready()
                            {
                                this.state = State::Closed;
                            } else {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_answer_is_readable_while_the_client_still_sends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut r, mut w) = s.split();
            // Far more than the socket buffers hold: the server never reads it itself.
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    read = r.read(&mut buf) => match read {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(err) => panic!("the client saw {err} after {sent} bytes"),
                    },
                    wrote = w.write(&chunk), if sent < 8 * 1024 * 1024 => {
                        sent += wrote.unwrap_or(0);
                    }
                }
            }
            answer
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = Linger::new(stream, LingerLimits::default());
        stream.write_all(b"413 answer").await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        assert_eq!(client.await.unwrap(), b"413 answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_closes_is_cut_off_at_the_idle_bound() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut stream = Linger::new(
            ours,
            LingerLimits {
                total: Duration::from_secs(5),
                idle: Duration::from_secs(2),
                max_bytes: 1024,
            },
        );
        let started = tokio::time::Instant::now();
        stream.shutdown().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
