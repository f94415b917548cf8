//! Where log lines go: stderr, either written by the thread that logged them (the
//! default: tests, the `enroll` command), or, once a server calls [`start`], the access
//! line (one per request) appended to a buffer that one writer thread empties into
//! stderr. Every other line (audit, warnings, start-up: all that goes through tracing)
//! is still written before the thread that logged it goes on ([`write_lines_now`]),
//! behind what is buffered, so that the order is kept and an audit line is on stderr
//! before its answer leaves, as before.
//!
//! The buffer takes the `write` system call (and, when stderr is a slow pipe, the wait)
//! off the request path, and under load turns many small writes into a few large ones.
//! A line is appended whole (lines from different threads never interleave, and keep
//! the order in which they were logged). Past [`MAX_PENDING`] bytes waiting, a thread
//! logging an access line waits for the writer (as it used to wait for stderr), but for
//! at most [`ACCESS_LINE_WAIT`]: a stderr that takes nothing for that long (a reader that
//! stopped) must not freeze every connection, so from then until the writer gets a write
//! through, access lines are counted and not kept, and the count is written when stderr
//! drains. No other line is ever dropped. An access line reaches stderr within [`GATHER`] (the writer, woken by the
//! first line, gathers more for that long, or until [`BATCH`] bytes wait, so that under
//! load one wake-up of the writer serves a hundred requests, not one); a line written now
//! ([`write_lines_now`]) joins the buffer and its logger waits until the writer, which
//! does not gather while anyone waits, has written it and everything before it (for at
//! most [`PUSH_NOW_WAIT`]: a stderr nobody reads must not hang the process); and
//! [`stop`] (called by the binaries before they exit, and by the panic hook) writes out
//! everything logged before it.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Bytes waiting for the writer beyond which a logging thread waits (backpressure).
pub const MAX_PENDING: usize = 1024 * 1024;

/// How long the writer, woken by a line, waits for more before it writes them out.
pub const GATHER: Duration = Duration::from_millis(10);

/// Bytes waiting at which the writer writes them out without waiting longer.
pub const BATCH: usize = 32 * 1024;

/// How long an access line ([`Sink::push`]) waits for room past [`MAX_PENDING`] before
/// access lines are dropped (and counted) until stderr takes a write again.
pub const ACCESS_LINE_WAIT: Duration = Duration::from_secs(2);

/// How long a line written now ([`Sink::push_now`]) waits for a stderr that takes
/// nothing before its thread goes on (shutdown must not hang on a reader that stopped).
pub const PUSH_NOW_WAIT: Duration = Duration::from_secs(2);

/// How long [`stop`] waits for stderr to take what is buffered before it gives up (a
/// reader that stopped reading must not hold the process's exit for ever).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A destination for whole lines: stderr, or a test's buffer.
type Output = Box<dyn Write + Send>;

struct State {
    /// Appended by loggers, taken whole by the writer.
    pending: Vec<u8>,
    /// Bytes ever appended to `pending`, and of those, bytes the writer has written (or
    /// tried to): a line written now waits until `written` reaches the end of its line.
    appended: u64,
    written: u64,
    /// The writer is waiting for lines (a logger must wake it).
    idle: bool,
    /// The writer is gathering lines for up to its gather time (a logger wakes it only
    /// with a full batch).
    gathering: bool,
    /// Threads waiting for the writer (a line written now, a flush, a logger held back by
    /// [`MAX_PENDING`]): while there are any, the writer does not gather.
    waiters: usize,
    /// The writer holds lines it took and has not finished writing.
    writing: bool,
    /// After [`Sink::stop`]: loggers write themselves, in order, under the lock.
    stopped: bool,
    /// A logger gave up waiting for stderr (an access line for room, a line written now
    /// for its write): until the writer's next write comes back, nobody waits for it
    /// again; access lines that find no room are dropped at once, and lines written now
    /// queue without waiting.
    stalled: bool,
    /// Access lines dropped since the last report.
    dropped: u64,
}

/// The buffer and its writer thread.
pub struct Sink {
    state: Mutex<State>,
    /// Wakes the writer (a line arrived, someone waits, or stop).
    wake_writer: Condvar,
    /// Wakes threads waiting for the writer: for room, or for their lines written.
    drained: Condvar,
    output: Mutex<Output>,
    /// How long the writer gathers lines ([`GATHER`]; longer in tests).
    gather: Duration,
}

impl Sink {
    /// A sink writing to `output`, with its writer thread started.
    pub fn start(output: Output) -> std::io::Result<&'static Sink> {
        Self::start_gathering(output, GATHER)
    }

    fn start_gathering(output: Output, gather: Duration) -> std::io::Result<&'static Sink> {
        let sink: &'static Sink = Box::leak(Box::new(Sink {
            state: Mutex::new(State {
                pending: Vec::with_capacity(64 * 1024),
                appended: 0,
                written: 0,
                idle: false,
                gathering: false,
                waiters: 0,
                writing: false,
                stopped: false,
                stalled: false,
                dropped: 0,
            }),
            wake_writer: Condvar::new(),
            drained: Condvar::new(),
            output: Mutex::new(output),
            gather,
        }));
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || sink.run())?;
        Ok(sink)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one or more whole lines (an access line): waits for room past
    /// [`MAX_PENDING`] for at most [`ACCESS_LINE_WAIT`], then drops and counts them.
    pub fn push(&self, lines: &[u8]) {
        let mut state = self.lock();
        // Read the clock only when there is no room: not on every request.
        let mut deadline = None;
        while !state.stopped
            && !state.pending.is_empty()
            && state.pending.len() + lines.len() > MAX_PENDING
        {
            let until = *deadline.get_or_insert_with(|| Instant::now() + ACCESS_LINE_WAIT);
            if state.stalled || Instant::now() >= until {
                state.stalled = true;
                state.dropped += 1;
                return;
            }
            state = self.wait_for_writer(state, Some(until));
        }
        if state.stopped {
            // After stop: written in place, in order.
            drop(state);
            self.push_now(lines);
            return;
        }
        state.pending.extend_from_slice(lines);
        state.appended += lines.len() as u64;
        let wake = state.idle || (state.gathering && state.pending.len() >= BATCH);
        if wake {
            state.idle = false;
            // Woken after the lock is released, so that the writer does not wake only to
            // wait for it.
            drop(state);
            self.wake_writer.notify_one();
        }
    }

    /// Writes whole lines before returning, behind everything logged before them: they
    /// join the buffer and the writer (told not to gather) writes them out at once. A
    /// stderr that takes nothing holds the caller for at most [`PUSH_NOW_WAIT`]; the
    /// lines then follow in order whenever it drains.
    ///
    /// Never written in place while the writer thread runs: a write to a slow stderr
    /// would then hold the buffer's lock, and with it every thread's access line.
    pub fn push_now(&self, lines: &[u8]) {
        let deadline = Instant::now() + PUSH_NOW_WAIT;
        let mut state = self.lock();
        if state.stopped {
            // After stop the writer ends once it has written what it holds; then lines
            // are written in place, under the lock, so that no line comes between.
            while (!state.pending.is_empty() || state.writing) && Instant::now() < deadline {
                state = self.wait_for_writer(state, Some(deadline));
            }
            if state.pending.is_empty() && !state.writing {
                self.write_out(lines);
                return;
            }
            // The writer is still stuck on stderr: the lines queue behind its work.
        }
        state.pending.extend_from_slice(lines);
        state.appended += lines.len() as u64;
        let mine = state.appended;
        while state.written < mine {
            // A stalled stderr is not waited for again while these lines fit in the room
            // kept for them beside the access lines' [`MAX_PENDING`]; past it, each waits
            // its bound as before, so that lines a client can cause (a refused login, a
            // wrong Host) cannot grow the buffer faster than that.
            if state.stalled && state.pending.len() <= 2 * MAX_PENDING {
                break;
            }
            if Instant::now() >= deadline {
                state.stalled = true;
                break;
            }
            state = self.wait_for_writer(state, Some(deadline));
        }
    }

    /// Waits on `drained` (at most until `until`) as one of the writer's waiters: the
    /// writer is woken if it is idle or gathering, and does not gather while anyone waits.
    fn wait_for_writer<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        state.waiters += 1;
        if state.idle || state.gathering {
            state.idle = false;
            self.wake_writer.notify_one();
        }
        let mut state = match until {
            None => self
                .drained
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(until) => {
                self.drained
                    .wait_timeout(state, until.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
        };
        state.waiters -= 1;
        state
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // As tracing's own stderr writer: a log that cannot be written is not an error
        // of the request that logged it.
        let _ = output.write_all(bytes);
        let _ = output.flush();
    }

    /// The writer thread: takes everything pending, writes it, again.
    fn run(&self) {
        let mut spare = Vec::with_capacity(64 * 1024);
        let mut state = self.lock();
        loop {
            while state.pending.is_empty() && !state.stopped {
                state.idle = true;
                state = self
                    .wake_writer
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.pending.is_empty() {
                // Stopped and drained.
                self.drained.notify_all();
                return;
            }
            state.idle = false;
            state = self.gather(state);
            state.writing = true;
            std::mem::swap(&mut state.pending, &mut spare);
            drop(state);
            // Room for loggers held back by MAX_PENDING.
            self.drained.notify_all();
            self.write_out(&spare);
            let taken = spare.len() as u64;
            // Keep a moderate buffer, not the largest burst ever seen.
            if spare.capacity() > 4 * MAX_PENDING {
                spare = Vec::with_capacity(64 * 1024);
            }
            spare.clear();
            state = self.lock();
            state.writing = false;
            state.written += taken;
            // stderr took a write: access lines are kept again, and the count of those
            // that were not goes out next.
            state.stalled = false;
            if state.dropped > 0 {
                let report = format!(
                    "WARN chromecard::log: {} access lines were not written: stderr took nothing for {} s with {} KiB waiting\n",
                    state.dropped,
                    ACCESS_LINE_WAIT.as_secs(),
                    MAX_PENDING / 1024
                );
                state.dropped = 0;
                state.pending.extend_from_slice(report.as_bytes());
                state.appended += report.len() as u64;
            }
            self.drained.notify_all();
        }
    }

    /// Lets more lines join the first for up to the gather time, unless a batch is full,
    /// someone waits for the writer, or the sink stops.
    fn gather<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let until = Instant::now() + self.gather;
        state.gathering = true;
        while !state.stopped && state.waiters == 0 && state.pending.len() < BATCH {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            state = self
                .wake_writer
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.gathering = false;
        state
    }

    /// Waits until everything pushed before this call has been written (at most `wait`);
    /// true if it was.
    pub fn flush(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        let all = state.appended;
        while state.written < all && Instant::now() < deadline {
            state = self.wait_for_writer(state, Some(deadline));
        }
        state.written >= all
    }

    /// Writes out what is buffered; from then on every line is written by the thread
    /// that logs it. True if everything buffered was written within `wait` (if not, the
    /// writer goes on with it, and later lines wait behind it).
    pub fn stop(&self, wait: Duration) -> bool {
        let stalled = {
            let mut state = self.lock();
            state.stopped = true;
            self.wake_writer.notify_one();
            state.stalled
        };
        // A stderr that already took nothing for seconds gets one more, not the whole wait.
        self.flush(if stalled {
            wait.min(PUSH_NOW_WAIT)
        } else {
            wait
        })
    }
}

static SINK: OnceLock<&'static Sink> = OnceLock::new();

/// Starts the buffered writer to stderr for the rest of the process (servers call this
/// once, before they serve; later calls do nothing).
pub fn start() {
    if SINK.get().is_some() {
        return;
    }
    match Sink::start(Box::new(std::io::stderr())) {
        Ok(sink) => {
            if SINK.set(sink).is_err() {
                // Lost a race with another start(): that one is used.
                sink.stop(Duration::ZERO);
            }
            // A panic's message is written straight to stderr: the lines logged before
            // it go first.
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flush(Duration::from_secs(1));
                previous(info);
            }));
        }
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "cannot start the log writer thread ({err}); logging directly to stderr"
            );
        }
    }
}

/// Writes out every line logged so far and returns to writing in place. The binaries
/// call it as they exit (and before any message they print to stderr themselves).
pub fn stop() {
    if let Some(sink) = SINK.get() {
        sink.stop(STOP_WAIT);
    }
}

/// Waits (at most `wait`) until every line logged so far has been written.
pub fn flush(wait: Duration) {
    if let Some(sink) = SINK.get() {
        sink.flush(wait);
    }
}

/// Writes whole lines: to the buffer once [`start`] has run, else straight to stderr.
/// For the access line, the one line per request.
pub fn write_lines(lines: &[u8]) {
    match SINK.get() {
        Some(sink) => sink.push(lines),
        None => {
            let _ = std::io::stderr().write_all(lines);
        }
    }
}

/// Writes whole lines before returning (after everything buffered before them): every
/// line that goes through tracing, the audit lines among them, is on stderr before the
/// request that logged it goes on, as before the buffer.
pub fn write_lines_now(lines: &[u8]) {
    match SINK.get() {
        Some(sink) => sink.push_now(lines),
        None => {
            let _ = std::io::stderr().write_all(lines);
        }
    }
}

/// tracing-subscriber's writer: each event arrives as one `write_all` of its whole line,
/// and is written at once ([`write_lines_now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_lines_now(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A shared buffer standing in for stderr, optionally slow.
    #[derive(Clone, Default)]
    struct Captured {
        bytes: Arc<Mutex<Vec<u8>>>,
        delay: Option<Duration>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(delay) = self.delay {
                std::thread::sleep(delay);
            }
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_each_thread_s_order() {
        let out = Captured::default();
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        sink.push(format!("thread {t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(sink.stop(Duration::from_secs(10)));
        let text = out.text();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words.len(), 4, "a torn line: {line:?}");
            let t: usize = words[1].parse().unwrap();
            assert_eq!(words[3].parse::<usize>().unwrap(), next[t], "out of order");
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4], "lines were lost");
    }

    #[test]
    fn a_line_is_written_promptly_without_a_flush() {
        let out = Captured::default();
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        for round in 0..3 {
            // Let the writer go idle, then log one line: it must not wait for more.
            std::thread::sleep(Duration::from_millis(20));
            sink.push(format!("audit {round}\n").as_bytes());
            let started = Instant::now();
            while !out.text().contains(&format!("audit {round}\n")) {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "the line was not written"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sink.stop(Duration::from_secs(1));
    }

    #[test]
    fn lines_logged_close_together_go_out_in_one_write() {
        let out = Captured::default();
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        // Let the writer go idle: the first line wakes it, the rest join it.
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..100 {
            sink.push(format!("access {i}\n").as_bytes());
        }
        let started = Instant::now();
        while !out.text().contains("access 99\n") {
            assert!(started.elapsed() < Duration::from_secs(2), "not written");
            std::thread::sleep(Duration::from_millis(1));
        }
        let writes = out.writes.load(std::sync::atomic::Ordering::Relaxed);
        // 100 lines pushed within far less than GATHER: one write, a few if this
        // thread was descheduled meanwhile; never one per line.
        assert!(writes < 10, "{writes} writes for 100 lines");
        sink.stop(Duration::from_secs(1));
    }

    /// Runs `f` on a thread; panics if it has not returned within 10 s (the sinks below
    /// gather for 60 s, so a line that waited for the gather would miss it).
    fn within_bound(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("waited for the writer's gather");
    }

    #[test]
    fn a_line_written_now_does_not_wait_for_the_gather() {
        let out = Captured::default();
        let sink = Sink::start_gathering(Box::new(out.clone()), Duration::from_secs(60)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        sink.push(b"access\n");
        within_bound(move || sink.push_now(b"audit\n"));
        assert_eq!(out.text(), "access\naudit\n");
        within_bound(move || assert!(sink.flush(Duration::from_secs(5))));
    }

    #[test]
    fn lines_written_now_are_not_starved_by_a_steady_stream_of_access_lines() {
        let out = Captured {
            delay: Some(Duration::from_millis(2)),
            ..Captured::default()
        };
        let sink = Sink::start_gathering(Box::new(out.clone()), Duration::from_secs(60)).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sink.push(format!("access {i}\n").as_bytes());
                    i += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        within_bound(move || {
            for round in 0..20 {
                sink.push_now(format!("audit {round}\n").as_bytes());
                assert!(out.text().contains(&format!("audit {round}\n")));
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        stream.join().unwrap();
    }

    #[test]
    fn stop_writes_everything_and_later_lines_follow_in_order() {
        let out = Captured {
            delay: Some(Duration::from_millis(5)),
            ..Captured::default()
        };
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        for i in 0..200 {
            sink.push(format!("line {i}\n").as_bytes());
        }
        assert!(sink.stop(Duration::from_secs(10)));
        let expected: String = (0..200).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected);
        sink.push(b"after stop\n");
        assert!(out.text().ends_with("line 199\nafter stop\n"));
    }

    #[test]
    fn a_line_written_now_is_out_on_return_behind_the_buffered_ones() {
        let out = Captured {
            delay: Some(Duration::from_millis(2)),
            ..Captured::default()
        };
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        for i in 0..50 {
            sink.push(format!("access {i}\n").as_bytes());
        }
        sink.push_now(b"audit now\n");
        let expected: String = (0..50).map(|i| format!("access {i}\n")).collect();
        assert_eq!(out.text(), expected + "audit now\n");
        sink.stop(Duration::from_secs(1));
    }

    #[test]
    fn a_slow_reader_holds_loggers_back_instead_of_losing_lines() {
        let out = Captured {
            delay: Some(Duration::from_millis(20)),
            ..Captured::default()
        };
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        let line = vec![b'x'; 64 * 1024 - 1];
        let mut with_newline = line.clone();
        with_newline.push(b'\n');
        // 64 lines of 64 KiB: 4 MiB, four times the bound; the pushes must wait.
        for _ in 0..64 {
            sink.push(&with_newline);
            assert!(sink.lock().pending.len() <= MAX_PENDING);
        }
        assert!(sink.stop(Duration::from_secs(30)));
        let text = out.text();
        assert_eq!(text.lines().count(), 64);
        assert!(text.lines().all(|l| l.len() == line.len()));
    }

    #[test]
    fn an_access_line_does_not_wait_for_a_line_written_now_to_a_slow_stderr() {
        let out = Captured {
            delay: Some(Duration::from_millis(800)),
            ..Captured::default()
        };
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| sink.push_now(b"audit\n"));
            // Until the writer is on that line's slow write.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !sink.lock().writing && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let started = Instant::now();
            sink.push(b"access\n");
            let took = started.elapsed();
            assert!(took < Duration::from_millis(300), "push waited {took:?}");
        });
        assert!(sink.stop(Duration::from_secs(10)));
        assert_eq!(out.text(), "audit\naccess\n");
    }

    /// A stderr whose reader stopped reading: every write blocks until `release`.
    #[derive(Clone, Default)]
    struct Stuck {
        released: Arc<(Mutex<bool>, std::sync::Condvar)>,
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (released, cv) = &*self.released;
            let mut released = released.lock().unwrap();
            while !*released {
                released = cv.wait(released).unwrap();
            }
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Access lines against a stderr that takes nothing: a logger waits for room at most
    /// ACCESS_LINE_WAIT once, later ones do not wait at all, and when stderr drains the
    /// lines kept come out followed by the count of those dropped.
    #[test]
    fn access_lines_to_a_stuck_stderr_are_counted_not_waited_for_forever() {
        let out = Stuck::default();
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        let line = [vec![b'x'; 64 * 1024 - 1], vec![b'\n']].concat();
        // The writer takes some lines and blocks on them; the next fill the buffer, until
        // one finds no room and waits its bound.
        let mut kept = 0;
        let first = loop {
            let started = Instant::now();
            sink.push(&line);
            let took = started.elapsed();
            if sink.lock().dropped > 0 {
                break took;
            }
            assert!(
                took < Duration::from_millis(500),
                "a push with room took {took:?}"
            );
            kept += 1;
            assert!(
                kept <= 2 * MAX_PENDING / line.len() + 1,
                "no push ever waited"
            );
        };
        assert!(
            first >= ACCESS_LINE_WAIT - Duration::from_millis(50)
                && first < ACCESS_LINE_WAIT + Duration::from_secs(2),
            "the first access line without room waited {first:?}"
        );
        let started = Instant::now();
        for _ in 0..100 {
            sink.push(&line);
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "later access lines waited {:?}",
            started.elapsed()
        );
        assert_eq!(sink.lock().dropped, 101);
        let (released, cv) = &*out.released;
        *released.lock().unwrap() = true;
        cv.notify_all();
        assert!(sink.stop(Duration::from_secs(10)));
        let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
        assert!(
            text.ends_with("101 access lines were not written: stderr took nothing for 2 s with 1024 KiB waiting\n"),
            "{}",
            &text[text.len().saturating_sub(200)..]
        );
        assert_eq!(text.lines().filter(|l| l.starts_with('x')).count(), kept);
    }

    /// Lines written now to a stalled stderr do not wait while they fit in their room,
    /// and past it each waits its bound: the buffer grows no faster than that.
    #[test]
    fn lines_written_now_to_a_stalled_stderr_are_held_back_past_their_room() {
        let out = Stuck::default();
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        sink.push_now(b"stalls\n");
        let line = [vec![b'a'; 64 * 1024 - 1], vec![b'\n']].concat();
        let started = Instant::now();
        while sink.lock().pending.len() + line.len() <= 2 * MAX_PENDING {
            sink.push_now(&line);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a line within the room waited"
            );
        }
        let started = Instant::now();
        sink.push_now(&line);
        let took = started.elapsed();
        assert!(
            took >= PUSH_NOW_WAIT - Duration::from_millis(50),
            "a line past the room waited only {took:?}"
        );
        assert!(sink.lock().pending.len() <= 2 * MAX_PENDING + 2 * line.len());
        let (released, cv) = &*out.released;
        *released.lock().unwrap() = true;
        cv.notify_all();
        assert!(sink.stop(Duration::from_secs(10)));
    }

    #[test]
    fn a_line_written_now_waits_for_a_stuck_stderr_at_most_its_bound() {
        let out = Stuck::default();
        let sink = Sink::start(Box::new(out.clone())).unwrap();
        // The first waits its bound; once one has, the next do not wait again (a
        // shutdown logs several lines, and must not wait for each).
        let started = Instant::now();
        sink.push_now(b"first\n");
        let took = started.elapsed();
        assert!(
            took >= PUSH_NOW_WAIT - Duration::from_millis(50)
                && took < PUSH_NOW_WAIT + Duration::from_secs(2),
            "push_now returned after {took:?}"
        );
        let started = Instant::now();
        sink.push_now(b"second\n");
        assert!(started.elapsed() < Duration::from_millis(200));
        // Nor does stop wait its whole bound for it.
        let started = Instant::now();
        assert!(!sink.stop(Duration::from_secs(10)));
        let took = started.elapsed();
        assert!(
            took < PUSH_NOW_WAIT + Duration::from_secs(1),
            "stop took {took:?}"
        );
        let (released, cv) = &*out.released;
        *released.lock().unwrap() = true;
        cv.notify_all();
        assert!(sink.flush(Duration::from_secs(10)));
        assert_eq!(
            String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap(),
            "first\nsecond\n"
        );
    }
}
