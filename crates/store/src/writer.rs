//! Group commit: one thread owns the store's write path.
//!
//! Callers send `(op, reply)` over a bounded queue. The thread takes the first queued
//! write, drains whatever else is queued (up to [`MAX_BATCH`]), applies them all in ONE
//! durable write transaction ([`Store::apply`]), and only after the commit returned
//! answers every caller with its own outcome (each increment its own, distinct value).
//! When the commit fails, every caller of the batch gets the error and no value.
//!
//! While one batch is being fsync'd, the next one queues up, so the number of fsyncs per
//! second stays about the same while the writes per fsync grow with the load.
//! [`CommitMode::PerRequest`] caps the batch at one write, which is one transaction per
//! request (the benchmark compares both).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::{Refused, Store, StoreError, WriteOp, WriteOutcome};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Writes that may wait for the writer; beyond it callers wait to queue.
pub const QUEUE_DEPTH: usize = 4096;

/// How writes are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Writes queued together share one durable transaction (up to [`MAX_BATCH`]).
    #[default]
    Group,
    /// Every write has its own durable transaction.
    PerRequest,
}

impl CommitMode {
    /// The most writes in one transaction.
    pub fn batch_cap(self) -> usize {
        match self {
            CommitMode::Group => MAX_BATCH,
            CommitMode::PerRequest => 1,
        }
    }
}

impl fmt::Display for CommitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommitMode::Group => "group",
            CommitMode::PerRequest => "per-request",
        })
    }
}

/// Why a queued write has no outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Refused on its own merits; nothing was written for it.
    #[error(transparent)]
    Refused(Refused),
    /// The batch's transaction failed; nothing of the batch was written.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

/// What travels on the queue: a write, or [`WriterThread::stop`]'s wake-up.
enum Msg {
    Write(Job),
    Stop,
}

/// The queue into the writer thread. Cheap to clone; the thread ends once every
/// `Writer` is dropped and the queue is empty.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Msg>,
    mode: CommitMode,
    stats: Arc<Stats>,
}

/// Counts of committed transactions and of the writes they held.
#[derive(Debug, Default)]
struct Stats {
    transactions: AtomicU64,
    writes: AtomicU64,
}

impl Stats {
    fn get(&self) -> (u64, u64) {
        (
            self.transactions.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").field("mode", &self.mode).finish()
    }
}

/// The writer thread; [`WriterThread::join`] waits for it to finish the queue.
#[derive(Debug)]
pub struct WriterThread {
    handle: JoinHandle<()>,
    stats: Arc<Stats>,
    /// Does not keep the thread alive: only a way to tell it to stop.
    queue: mpsc::WeakSender<Msg>,
}

impl WriterThread {
    /// Waits until every `Writer` is dropped and the last batch is committed; returns
    /// (transactions committed, writes they held).
    pub fn join(self) -> (u64, u64) {
        if self.handle.join().is_err() {
            tracing::error!("the store's writer thread panicked");
        }
        self.stats.get()
    }

    /// Stops the writer while `Writer`s may still exist: what is queued now is committed
    /// and answered; every later write gets [`StoreError::WriterStopped`] at once. Waits
    /// for the thread like [`WriterThread::join`]. Not for use inside an async runtime.
    pub fn stop(self) -> (u64, u64) {
        if let Some(queue) = self.queue.upgrade() {
            // Fails only when the thread is already gone.
            let _ = queue.blocking_send(Msg::Stop);
        }
        self.join()
    }
}

impl Writer {
    /// Starts the writer thread for `store`.
    pub fn start(
        store: Arc<Store>,
        mode: CommitMode,
    ) -> Result<(Writer, WriterThread), std::io::Error> {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let cap = mode.batch_cap();
        let stats = Arc::new(Stats::default());
        let handle = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || run(&store, rx, cap, &stats))?
        };
        let thread = WriterThread {
            handle,
            stats: stats.clone(),
            queue: queue.downgrade(),
        };
        Ok((Writer { queue, mode, stats }, thread))
    }

    pub fn mode(&self) -> CommitMode {
        self.mode
    }

    /// (transactions committed, writes they held) since the start.
    pub fn committed(&self) -> (u64, u64) {
        self.stats.get()
    }

    /// Queues `op` and waits for its outcome, which arrives only after the transaction
    /// holding it has been committed to disk.
    pub async fn submit(&self, op: WriteOp) -> Result<WriteOutcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        if self
            .queue
            .send(Msg::Write(Job { op, reply }))
            .await
            .is_err()
        {
            return Err(WriteError::Store(Arc::new(StoreError::WriterStopped)));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(WriteError::Store(Arc::new(StoreError::WriterStopped))))
    }

    /// Increments the counter; the new value.
    pub async fn increment(&self) -> Result<u64, WriteError> {
        match self.submit(WriteOp::Increment).await? {
            WriteOutcome::Counter(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(outcome: WriteOutcome) -> WriteError {
    WriteError::Store(Arc::new(StoreError::Database {
        path: Default::default(),
        action: "matching a write to its outcome",
        detail: format!("unexpected outcome {outcome:?}"),
    }))
}

/// The writer loop: one batch per transaction, until every sender is gone.
fn run(store: &Store, mut rx: mpsc::Receiver<Msg>, cap: usize, stats: &Stats) {
    let mut ops = Vec::with_capacity(cap);
    let mut replies = Vec::with_capacity(cap);
    while let Some(first) = rx.blocking_recv() {
        let mut stop = false;
        let mut take = |msg: Msg| match msg {
            // A caller that went away (its connection closed) is owed nothing; its
            // write is not made.
            Msg::Write(job) if !job.reply.is_closed() => {
                ops.push(job.op);
                replies.push(job.reply);
            }
            Msg::Write(_) => {}
            Msg::Stop => stop = true,
        };
        take(first);
        let mut drained = 1;
        while drained < cap {
            match rx.try_recv() {
                Ok(msg) => {
                    take(msg);
                    drained += 1;
                }
                Err(_) => break,
            }
        }
        if stop {
            // No new writes; what is already queued is still taken and answered below.
            rx.close();
        }
        if ops.is_empty() {
            continue;
        }
        let applied = catch_unwind(AssertUnwindSafe(|| store.apply(&ops)));
        ops.clear();
        match applied {
            Ok(Ok(outcomes)) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                stats
                    .writes
                    .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    // The caller may have gone meanwhile; its write is committed anyway.
                    let _ = reply.send(outcome.map_err(WriteError::Refused));
                }
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, writes = replies.len(), "a write transaction failed; every write of the batch is refused");
                let err = Arc::new(err);
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(WriteError::Store(err.clone())));
                }
            }
            Err(_) => {
                tracing::error!(
                    writes = replies.len(),
                    "a write transaction panicked; every write of the batch is refused"
                );
                let err = Arc::new(StoreError::Database {
                    path: store.path().to_path_buf(),
                    action: "applying a batch of writes",
                    detail: "the transaction panicked".into(),
                });
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(WriteError::Store(err.clone())));
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}
