//! The executor both binaries hand to hyper's HTTP/2 connections, which spawn a task for
//! every stream: on the client, the future that waits for the answer; on the server, the
//! one that runs the handler. hyper gives that future the type of the whole connection
//! (an enum whose largest variant is the connection itself, about 2.5 KiB on k_proxy's
//! hop), and tokio moves a task's future by value several times while it spawns and
//! finishes it. Boxing it first makes that one copy into the heap, and the rest pointer
//! moves. Callgrind, one request at a time over the HTTP/2 hop: k_proxy 81.9k → 79.1k
//! instructions per request, k_server 48.1k → 47.8k (bench/RESULTS.md).

use std::future::Future;

/// A [`hyper::rt::Executor`] that spawns each future boxed on the current tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct BoxedSpawn;

impl<F> hyper::rt::Executor<F> for BoxedSpawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    #[tokio::test]
    async fn a_spawned_future_runs_to_its_end() {
        let (done, finished) = tokio::sync::oneshot::channel();
        BoxedSpawn.execute(async move {
            tokio::task::yield_now().await;
            done.send(7).unwrap();
        });
        assert_eq!(finished.await.unwrap(), 7);
    }
}
