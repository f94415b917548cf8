//! Connection workers, one thread per CPU: each runs a single-threaded tokio runtime, and
//! an accepted connection is handed to one of them (in turn) for its whole life.
//!
//! Why: on the shared work-stealing runtime a request's task, the task driving its
//! connection to k_server and the timers between them wander across CPUs, and every
//! hand-over between two of them is a cross-CPU wake-up (a futex, an IPI, cold caches).
//! On a worker, the request, the upstream connection it borrows from that worker's share
//! of the pool (`current_worker`) and their timers all stay on one thread, as nginx keeps
//! a connection in one worker process.
//!
//! A worker never blocks: key operations and file writes already go to blocking threads
//! (`spawn_blocking`, which a current-thread runtime has too).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the connection worker this thread is, or `None` on any other thread.
pub fn current_worker() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How long a stopping worker gives the tasks it still has (connections past the drain)
/// before its runtime is dropped.
const WORKER_SHUTDOWN: Duration = Duration::from_secs(1);

/// The workers; dropping this stops them (each cancels what it still runs) and waits
/// for their threads to end (at most about [`WORKER_SHUTDOWN`]: they stop together).
pub struct ConnectionWorkers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped first: each worker's `block_on` then returns.
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ConnectionWorkers {
    /// Starts `count` (at least 1) worker threads named `{name}-{index}`.
    pub fn start(name: &str, count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            // The runtime is built and dropped on its own thread: dropping one inside the
            // caller's runtime (as a failed spawn would) panics.
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = started.send(Err(err));
                            return;
                        }
                    };
                    let _ = started.send(Ok(runtime.handle().clone()));
                    WORKER.with(|worker| worker.set(Some(index)));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    runtime.shutdown_timeout(WORKER_SHUTDOWN);
                })?;
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a connection worker ended as it started"))??;
            handles.push(handle);
            stops.push(stop);
            threads.push(thread);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stops,
            threads,
        })
    }

    /// Runs `task` on the next worker in turn.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(task);
    }
}

impl Drop for ConnectionWorkers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_go_to_the_workers_in_turn_and_stay_on_their_thread() {
        let workers = ConnectionWorkers::start("test-worker", 2).unwrap();
        assert_eq!(workers.handles.len(), 2);
        assert_eq!(current_worker(), None);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            workers.spawn(async move {
                let before = (current_worker(), std::thread::current().id());
                // Across an await (a timer of the worker's own runtime), still there.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let after = (current_worker(), std::thread::current().id());
                let _ = tx.send((before, after));
            });
            let (before, after) = rx.await.unwrap();
            assert_eq!(before, after);
            seen.push(before.0);
        }
        assert_eq!(seen, [Some(0), Some(1), Some(0), Some(1)]);
    }

    #[tokio::test]
    async fn dropping_the_workers_cancels_their_tasks() {
        let workers = ConnectionWorkers::start("test-worker", 1).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        workers.spawn(async move {
            std::future::pending::<()>().await;
            drop(tx);
        });
        drop(workers);
        // The pending task is dropped with its runtime, and with it the sender.
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the worker's task was not cancelled")
            .unwrap_err();
    }
}
