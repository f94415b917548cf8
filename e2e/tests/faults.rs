//! Fault injection against the real binaries (issue 8): k_server SIGKILLed under load,
//! a k_server that answers late or never, slowloris request heads, thousands of idle
//! connections, and SIGTERM while a request is being forwarded.
//!
//! Each case bounds every wait it makes, so a hang shows up as a failed assertion with
//! the timings, not as a stuck test. The whole file runs in well under a minute.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

// ---------------------------------------------------------------------------
// A fake k_server whose answers we control
// ---------------------------------------------------------------------------

/// A minimal HTTP/1.1 upstream, one thread per connection, `Connection: close`:
/// * `/resource/hang...`: reads the request and never answers (until dropped);
/// * `/resource/slow/<ms>`: answers 200 JSON after `<ms>` milliseconds;
/// * anything else: answers 200 JSON at once.
struct FakeUpstream {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Complete request heads read so far.
    received: Arc<AtomicUsize>,
    /// Requests answered so far.
    answered: Arc<AtomicUsize>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (st, rc, an) = (stop.clone(), received.clone(), answered.clone());
        let acceptor = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (st, rc, an) = (st.clone(), rc.clone(), an.clone());
                        thread::spawn(move || fake_connection(stream, &st, &rc, &an));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeUpstream {
            port,
            stop,
            received,
            answered,
            acceptor: Some(acceptor),
        }
    }
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d`, waking early if `stop` is set.
fn sleep_unless(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

fn fake_connection(
    mut s: TcpStream,
    stop: &AtomicBool,
    received: &AtomicUsize,
    answered: &AtomicUsize,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let head_end = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    // Drain a Content-Length body, if any (k_proxy forwards whole bodies).
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length && !stop.load(Ordering::SeqCst) {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => have += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    received.fetch_add(1, Ordering::SeqCst);
    if path.starts_with("/resource/hang") {
        // Hold the connection, never answer.
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    let delay_ms = path
        .strip_prefix("/resource/slow/")
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    sleep_unless(Duration::from_millis(delay_ms), stop);
    let body = json!({ "fake": true, "path": path, "delay_ms": delay_ms }).to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(answer.as_bytes()).is_ok() {
        answered.fetch_add(1, Ordering::SeqCst);
    }
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// The soft and hard `RLIMIT_NOFILE` of this process, from /proc/self/limits.
fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |f: Option<&str>| match f? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((parse(fields.next())?, parse(fields.next())?))
}

/// Makes sure this test process (and so the binaries it spawns from now on) may open
/// `need` files: raises the soft limit with prlimit(1) if the hard limit allows.
/// `Err` explains why not, for a skip message.
fn ensure_nofile(need: u64) -> Result<(), String> {
    let (soft, hard) =
        nofile_limits().ok_or("cannot read `Max open files` from /proc/self/limits")?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(format!(
            "`ulimit -n` is {soft} (hard limit {hard}); this test needs {need} open files. \
             Raise it (`ulimit -n {need}`) before running the tests"
        ));
    }
    let hard_s = if hard == u64::MAX {
        "unlimited".to_string()
    } else {
        hard.to_string()
    };
    let raised = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={need}:{hard_s}"))
        .status();
    match (raised, nofile_limits()) {
        (Ok(st), Some((now, _))) if st.success() && now >= need => Ok(()),
        (r, _) => Err(format!(
            "`ulimit -n` is {soft}; this test needs {need} and raising it with prlimit failed ({r:?}); \
             run `ulimit -n {need}` before the tests"
        )),
    }
}

/// The two tests that hold 2,000 connections run one at a time (file descriptors).
static MANY_CONNECTIONS: Mutex<()> = Mutex::new(());

/// How the far end left an idle client connection, seen without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Still open; nothing to read.
    Open,
    /// The server closed it (EOF or reset), possibly after sending something.
    Closed,
}

fn probe_idle(s: &TcpStream) -> Idle {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 512];
    let mut reader = s;
    let state = match reader.read(&mut b) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Idle::Open,
        // EOF, a reset, or an answer before closing (a cap refusal may say something):
        // either way the server is not holding this connection idle.
        _ => Idle::Closed,
    };
    s.set_nonblocking(false).expect("blocking");
    state
}

/// Opens `n` TCP connections to 127.0.0.1:`port`, sending nothing.
fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("idle connection {i} of {n} to port {port}: {e}"));
        conns.push(s);
    }
    conns
}

/// Sends `GET /healthz` on an already open connection; the status code (0 if none).
fn healthz_on(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while find(&got, b"\r\n\r\n").is_none() {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Number of open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// k_server killed under load
// ---------------------------------------------------------------------------

/// One request of the load, with when it started.
struct Shot {
    start: Instant,
    resp: Resp,
}

#[test]
fn killed_server_under_load_fails_fast_and_proxy_recovers() {
    const UPSTREAM_TIMEOUT: u64 = 3;
    const THREADS: usize = 6;
    let certs = Certs::generate();
    let sport = free_port();
    let mut server = k_server_tls(&certs, sport).start(sport);
    let state = server.state_home().to_path_buf();
    // Plain HTTP toward the test's clients, mutual TLS toward k_server (the real hop).
    let (mut proxy, _pport, c) = start_proxy_plain_to_tls(
        &certs,
        sport,
        &[
            "--upstream-timeout",
            &UPSTREAM_TIMEOUT.to_string(),
            "--upstream-connect-timeout",
            "2",
        ],
    );
    let tok = c.login_ok("alice");

    // Load: THREADS clients increment the counter back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (c, tok, stop) = (c.clone(), tok.clone(), stop.clone());
            thread::spawn(move || {
                let mut shots = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let resp = c.counter_post(&tok);
                    shots.push(Shot { start, resp });
                }
                shots
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1200));
    server.kill(); // SIGKILL, mid-load
    let killed_at = Instant::now();
    thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    let shots: Vec<Shot> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("load thread"))
        .collect();

    let bound = Duration::from_secs(UPSTREAM_TIMEOUT) + Duration::from_secs(2);
    let mut before_ok = Vec::new();
    let (mut failed, mut spanning, mut slowest) = (0, 0, Duration::ZERO);
    for shot in &shots {
        let r = &shot.resp;
        slowest = slowest.max(r.elapsed);
        assert_eq!(
            r.exit_code,
            0,
            "every request must get a complete HTTP answer (no hang, no dropped connection){}",
            r.ctx()
        );
        assert!(
            r.elapsed <= bound,
            "a request took {:?}, over --upstream-timeout {UPSTREAM_TIMEOUT} s + 2 s{}",
            r.elapsed,
            r.ctx()
        );
        if shot.start < killed_at && killed_at < shot.start + r.elapsed {
            spanning += 1;
        }
        match r.status {
            200 => {
                assert!(
                    shot.start < killed_at,
                    "a request sent after k_server was SIGKILLed got 200{}",
                    r.ctx()
                );
                before_ok.push(counter_of(r));
            }
            502 | 504 => {
                r.expect_error_in(r.status, &["upstream_unavailable", "upstream_timeout"]);
                failed += 1;
            }
            _ => panic!(
                "during a k_server crash only 200, 502 and 504 are acceptable{}",
                r.ctx()
            ),
        }
    }
    eprintln!(
        "kill under load: {} requests, {} answered 200 before the kill, {failed} got 502/504, \
         {spanning} were in flight at the SIGKILL, slowest {slowest:?}",
        shots.len(),
        before_ok.len()
    );
    assert!(
        before_ok.len() >= THREADS,
        "the load did not get going before the kill"
    );
    assert!(failed >= THREADS, "too few requests hit the dead k_server");
    let mut distinct = before_ok.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        before_ok.len(),
        "two 200 answers carried the same counter value"
    );
    let max_before = *distinct.last().expect("some 200s");
    proxy.assert_running();
    c.status(&tok).expect(200);

    // k_server returns on the same port with the same data: k_proxy uses it again by
    // itself, from the very first request, and nothing acknowledged was lost.
    let mut server2 = k_server_tls(&certs, sport).state_home(&state).start(sport);
    let first = c.counter_post(&tok);
    let n = counter_of(&first);
    assert!(
        n > max_before,
        "after the restart the counter is {n}, not above {max_before} acknowledged before the SIGKILL"
    );
    let after: Vec<u64> = (0..THREADS)
        .map(|_| {
            let (c, tok) = (c.clone(), tok.clone());
            thread::spawn(move || {
                (0..5)
                    .map(|_| counter_of(&c.counter_post(&tok)))
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    assert!(after.iter().all(|&m| m > n), "counter went back: {after:?}");
    proxy.assert_running();
    server2.assert_running();
}

/// The deterministic half of the crash case: requests that are certainly in flight at
/// the upstream when it dies (its sockets closed, as the kernel does on SIGKILL) get a
/// 502 at once, not a 504 after the response timeout.
#[test]
fn upstream_dying_mid_request_gives_502_at_once() {
    let fake = FakeUpstream::start();
    let (mut proxy, _port, c) = start_proxy_plain(
        &fake.base_url(),
        &["--gate", "soft", "--upstream-timeout", "10"],
    );
    let tok = c.login_ok("alice");
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (c, tok) = (c.clone(), tok.clone());
            thread::spawn(move || {
                let r = c.req("GET", "/resource/hang", &[&Client::bearer(&tok)], &[]);
                (r, Instant::now())
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(3), || fake.received() >= 4),
        "the requests never reached the fake upstream"
    );
    let died_at = Instant::now();
    drop(fake); // every upstream socket closes
    for t in in_flight {
        let (r, ended) = t.join().expect("thread");
        r.expect_error(502, "upstream_unavailable");
        let waited = ended.saturating_duration_since(died_at);
        assert!(
            waited < Duration::from_secs(3),
            "a request in flight when the upstream died was answered {waited:?} later{}",
            r.ctx()
        );
    }
    c.status(&tok).expect(200);
    proxy.assert_running();
}

// ---------------------------------------------------------------------------
// k_server slow or silent
// ---------------------------------------------------------------------------

#[test]
fn silent_upstream_gives_504_at_the_bound_and_others_are_served() {
    let fake = FakeUpstream::start();
    let (mut proxy, _port, c) = start_proxy_plain(
        &fake.base_url(),
        &["--gate", "soft", "--upstream-timeout", "2"],
    );
    let tok = c.login_ok("alice");

    // Four requests to an upstream that accepts and never answers...
    let hanging: Vec<_> = (0..4)
        .map(|_| {
            let (c, tok) = (c.clone(), tok.clone());
            thread::spawn(move || {
                c.req(
                    "POST",
                    "/resource/hang",
                    &[&Client::bearer(&tok)],
                    &["--data-binary", "{}"],
                )
            })
        })
        .collect();
    // ...while other requests are answered meanwhile: a slow-but-in-bound one is not cut
    // off, a quick one is quick, and k_proxy's own endpoints do not wait.
    assert!(
        wait_until(Duration::from_secs(3), || fake.received() >= 4),
        "the hanging requests never reached the fake upstream"
    );
    let t = Instant::now();
    let quick = c.req("GET", "/resource/quick", &[&Client::bearer(&tok)], &[]);
    assert_eq!(quick.expect(200)["fake"], json!(true), "{}", quick.ctx());
    c.healthz().expect(200);
    c.status(&tok).expect(200);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "k_proxy was slow to serve others while 4 requests hung: {:?}",
        t.elapsed()
    );
    let slow = c.req("GET", "/resource/slow/1200", &[&Client::bearer(&tok)], &[]);
    assert_eq!(slow.expect(200)["delay_ms"], json!(1200), "{}", slow.ctx());

    for h in hanging {
        let r = h.join().expect("thread");
        r.expect_error(504, "upstream_timeout");
        assert!(
            r.elapsed >= Duration::from_millis(1800) && r.elapsed <= Duration::from_millis(3500),
            "504 must come at the 2 s --upstream-timeout bound, came after {:?}{}",
            r.elapsed,
            r.ctx()
        );
    }
    // A late answer (3 s > 2 s bound) is a 504 too, and the session survives.
    let late = c.req("GET", "/resource/slow/3000", &[&Client::bearer(&tok)], &[]);
    late.expect_error(504, "upstream_timeout");
    c.status(&tok).expect(200);
    proxy.assert_running();
}

// ---------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------

/// What happened to one slowloris connection.
#[derive(Debug)]
struct Loris {
    /// Time from connect until the server closed the connection; None if it never did.
    closed_after: Option<Duration>,
    bytes_sent: usize,
    /// What the server sent before closing, if anything.
    answer: String,
}

/// Sends `head` one byte per second until the server closes the connection, at most
/// `give_up`.
fn slowloris(port: u16, head: &'static [u8], give_up: Duration) -> Loris {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("slowloris connect");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut sent = 0;
    loop {
        if start.elapsed() > give_up {
            return Loris {
                closed_after: None,
                bytes_sent: sent,
                answer: String::from_utf8_lossy(&answer).into_owned(),
            };
        }
        if sent < head.len() && s.write_all(&head[sent..=sent]).is_ok() {
            sent += 1;
        }
        // Waiting one second for the server doubles as the dribble's pace.
        let mut b = [0u8; 1024];
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break, // reset
        }
    }
    Loris {
        closed_after: Some(start.elapsed()),
        bytes_sent: sent,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

#[test]
fn slowloris_heads_are_closed_at_the_bound_while_clients_are_served() {
    const LORISES: usize = 40;
    const HEAD: &[u8] = b"POST /session/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let dead = free_port();
    let (mut proxy, port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{dead}"),
        &["--gate", "soft", "--header-read-timeout", "2"],
    );
    let lorises: Vec<_> = (0..LORISES)
        .map(|_| thread::spawn(move || slowloris(port, HEAD, Duration::from_secs(9))))
        .collect();

    // Normal clients, meanwhile, get prompt answers throughout.
    let t0 = Instant::now();
    let mut served = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let tok = c.login_ok("bob");
        c.status(&tok).expect(200);
        c.healthz().expect(200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a normal client waited {:?} while slowloris connections were open",
            t.elapsed()
        );
        served += 1;
        thread::sleep(Duration::from_millis(200));
    }

    let results: Vec<Loris> = lorises
        .into_iter()
        .map(|t| t.join().expect("slowloris thread"))
        .collect();
    let latest = results
        .iter()
        .filter_map(|l| l.closed_after)
        .max()
        .unwrap_or_default();
    eprintln!(
        "slowloris: {LORISES} connections closed by k_proxy at most {latest:?} after connect \
         (bound 2 s); {served} normal login+status+healthz rounds meanwhile; first answer seen: {:?}",
        results[0].answer
    );
    for l in &results {
        let after = l.closed_after.unwrap_or_else(|| {
            panic!("a slowloris connection was still open after 9 s (bound 2 s): {l:?}")
        });
        assert!(
            after >= Duration::from_millis(1500) && after <= Duration::from_millis(4500),
            "slowloris closed after {after:?}, expected about the 2 s --header-read-timeout: {l:?}"
        );
        assert!(
            l.bytes_sent < HEAD.len(),
            "the slowloris head was completed, so the bound was not exercised: {l:?}"
        );
        assert!(
            !l.answer.starts_with("HTTP/1.1 2"),
            "a partial request head was answered with success: {l:?}"
        );
    }
    assert!(served >= 3, "too few normal rounds ({served})");
    proxy.assert_running();
}

// ---------------------------------------------------------------------------
// 2,000 idle connections
// ---------------------------------------------------------------------------

const IDLE: usize = 2000;

#[test]
fn two_thousand_idle_connections_are_held_and_login_still_works() {
    let _one_at_a_time = MANY_CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = ensure_nofile(IDLE as u64 + 512) {
        skip_or_fail(
            "two_thousand_idle_connections_are_held_and_login_still_works",
            &why,
        );
        return;
    }
    let dead = free_port();
    // The cap raised above 2,000; a long header timeout so the idle ones are not reaped.
    let (mut proxy, port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{dead}"),
        &[
            "--gate",
            "soft",
            "--max-connections",
            "4096",
            "--header-read-timeout",
            "60",
        ],
    );
    let mut idle = open_idle(port, IDLE);
    // k_proxy holds all of them (one descriptor each) ...
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(proxy.pid()) >= IDLE),
        "k_proxy holds only {} descriptors for {IDLE} idle connections",
        fd_count(proxy.pid())
    );
    // ... and a new client logs in promptly.
    let t = Instant::now();
    let tok = c.login_ok("alice");
    c.status(&tok).expect(200);
    let login_took = t.elapsed();
    assert!(
        login_took < Duration::from_secs(3),
        "login with {IDLE} idle connections took {login_took:?}"
    );
    let open = idle.iter().filter(|s| probe_idle(s) == Idle::Open).count();
    assert_eq!(
        open, IDLE,
        "k_proxy closed some idle connections under the cap"
    );
    // They are served connections, not a backlog: the first and the last answer.
    let last = idle.len() - 1;
    assert_eq!(healthz_on(&mut idle[0]), 200, "first idle connection");
    assert_eq!(healthz_on(&mut idle[last]), 200, "last idle connection");
    eprintln!(
        "idle: {IDLE} idle connections held ({} fds in k_proxy), login+status took {login_took:?}",
        fd_count(proxy.pid())
    );
    drop(idle);
    proxy.assert_running();
}

#[test]
fn beyond_the_connection_cap_new_connections_are_refused_cleanly_and_recover() {
    const CAP: usize = 1024; // k_proxy's default --max-connections, given explicitly
    let _one_at_a_time = MANY_CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = ensure_nofile(IDLE as u64 + 512) {
        skip_or_fail(
            "beyond_the_connection_cap_new_connections_are_refused_cleanly_and_recover",
            &why,
        );
        return;
    }
    let dead = free_port();
    let (mut proxy, port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{dead}"),
        &[
            "--gate",
            "soft",
            "--max-connections",
            &CAP.to_string(),
            "--header-read-timeout",
            "60",
        ],
    );
    let mut idle = open_idle(port, IDLE);
    // Exactly CAP are held; the rest were closed at accept.
    let mut states = Vec::new();
    let settled = wait_until(Duration::from_secs(5), || {
        states = idle.iter().map(probe_idle).collect();
        states.iter().filter(|&&s| s == Idle::Open).count() == CAP
    });
    let open = states.iter().filter(|&&s| s == Idle::Open).count();
    assert!(
        settled,
        "{open} of {IDLE} idle connections are open; expected exactly the cap, {CAP}"
    );

    // A new client at the cap is refused at once and cleanly: no hang, and either no
    // HTTP answer at all or a JSON 503.
    let refused = c.login("alice");
    assert!(
        refused.elapsed < Duration::from_secs(2),
        "a connection over the cap waited {:?}{}",
        refused.elapsed,
        refused.ctx()
    );
    match refused.status {
        0 => assert!(
            [52, 56].contains(&refused.exit_code),
            "over the cap: expected an empty reply or a reset{}",
            refused.ctx()
        ),
        503 => {
            refused.expect_json_error(503, &["too_many_connections", "connection_limit"]);
        }
        _ => panic!(
            "over the cap a new connection must be refused{}",
            refused.ctx()
        ),
    }
    // The held connections are still served.
    let first_open = states
        .iter()
        .position(|&s| s == Idle::Open)
        .expect("some open");
    assert_eq!(
        healthz_on(&mut idle[first_open]),
        200,
        "a held connection at the cap"
    );

    // Some idle clients leave: a new client gets in by itself.
    let mut closed = 0;
    for (i, s) in states.iter().enumerate() {
        if *s == Idle::Open && i != first_open && closed < 10 {
            let _ = idle[i].shutdown(Shutdown::Both);
            closed += 1;
        }
    }
    let t = Instant::now();
    let mut tok = None;
    let recovered = wait_until(Duration::from_secs(3), || {
        let r = c.login("alice");
        if r.status == 200 {
            tok = r.json()["session_token"].as_str().map(str::to_owned);
            true
        } else {
            false
        }
    });
    assert!(
        recovered,
        "after 10 idle connections closed, login still failed for 3 s"
    );
    eprintln!(
        "cap: {open} of {IDLE} held at --max-connections {CAP}; new connection refused in {:?} \
         (status {}, curl exit {}); login worked {:?} after 10 idle ones closed",
        refused.elapsed,
        refused.status,
        refused.exit_code,
        t.elapsed()
    );
    c.status(&tok.expect("token")).expect(200);
    drop(idle);
    proxy.assert_running();
}

// ---------------------------------------------------------------------------
// SIGTERM during a forwarded request
// ---------------------------------------------------------------------------

#[test]
fn sigterm_lets_the_forwarded_request_finish_then_exits_zero() {
    let fake = FakeUpstream::start();
    let (mut proxy, port, c) = start_proxy_plain(
        &fake.base_url(),
        &["--gate", "soft", "--upstream-timeout", "10"],
    );
    let tok = c.login_ok("alice");
    let in_flight = {
        let (c, tok) = (c.clone(), tok.clone());
        thread::spawn(move || {
            c.req(
                "POST",
                "/resource/slow/1200",
                &[&Client::bearer(&tok)],
                &["--data-binary", "{\"n\":1}"],
            )
        })
    };
    assert!(
        wait_until(Duration::from_secs(3), || fake.received() >= 1),
        "the request never reached the fake upstream"
    );
    let term_at = Instant::now();
    proxy.signal("TERM");
    // It stops accepting new connections at once ...
    assert!(
        wait_until(Duration::from_millis(800), || !port_accepts(port)),
        "k_proxy still accepts connections after SIGTERM"
    );
    assert_eq!(
        fake.answered(),
        0,
        "the fake answered before SIGTERM; the request was not in flight"
    );
    // ... and the in-flight request completes with k_server's answer.
    let r = in_flight.join().expect("thread");
    let v = r.expect(200);
    assert_eq!(v["delay_ms"], json!(1200), "{}", r.ctx());
    assert_eq!(v["path"], json!("/resource/slow/1200"), "{}", r.ctx());
    let status = proxy.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "k_proxy did not exit within 5 s of SIGTERM\n{}",
            proxy.logs()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "k_proxy must exit 0 after SIGTERM, got {status}\n{}",
        proxy.logs()
    );
    eprintln!(
        "sigterm: in-flight request answered 200 after {:?}; k_proxy exited 0 {:?} after SIGTERM",
        r.elapsed,
        term_at.elapsed()
    );
}

/// SIGTERM with connections open that never made a request (a fresh idle one, a
/// partial request head, a TLS handshake not even started, a finished TLS handshake)
/// and a keep-alive connection between requests: none of them holds the exit up until
/// its header-read timeout (10 s here); k_proxy exits 0 at once.
#[test]
fn sigterm_does_not_wait_for_connections_without_a_request() {
    let certs = Certs::generate();
    let dead = free_port();
    let (mut plain, pport, _c) =
        start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &["--gate", "soft"]);
    let tport = free_port();
    let mut tls = Spawn::k_proxy()
        .args([
            "--port",
            &tport.to_string(),
            "--server-base-url",
            &format!("http://127.0.0.1:{dead}"),
            "--proxy-token",
            PROXY_TOKEN,
            "--gate",
            "soft",
            "--tls-certfile",
            &s(certs.proxy_crt()),
            "--tls-keyfile",
            &s(certs.proxy_key()),
        ])
        .start(tport);

    let fresh = TcpStream::connect(("127.0.0.1", pport)).expect("connect");
    let mut partial = TcpStream::connect(("127.0.0.1", pport)).expect("connect");
    partial.write_all(b"GET /heal").expect("partial head");
    let mut kept = TcpStream::connect(("127.0.0.1", pport)).expect("connect");
    assert_eq!(healthz_on(&mut kept), 200, "keep-alive connection");
    let no_hello = TcpStream::connect(("127.0.0.1", tport)).expect("connect");
    let mut s_client = Spawn::program("openssl", "openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{tport}"),
            "-CAfile",
            &s(certs.ca()),
            "-brief",
            "-ign_eof",
        ])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(5), || s_client
            .stderr()
            .contains("CONNECTION ESTABLISHED")),
        "openssl s_client did not complete the handshake\n{}",
        s_client.logs()
    );
    thread::sleep(Duration::from_millis(200));

    let t = Instant::now();
    plain.signal("TERM");
    tls.signal("TERM");
    for p in [&mut plain, &mut tls] {
        let st = p
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{} did not exit after SIGTERM\n{}", p.name, p.logs()));
        assert_eq!(st.code(), Some(0), "exit status {st}\n{}", p.logs());
    }
    let took = t.elapsed();
    eprintln!("sigterm with request-less connections open: both k_proxy exited 0 within {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "k_proxy took {took:?} to exit after SIGTERM: connections that never made a request \
         held the drain up (until their 10 s header-read timeout)"
    );
    drop((fresh, partial, kept, no_hello));
    let _ = s_client.wait_exit(Duration::from_secs(2));
}

// ---------------------------------------------------------------------------
// Clients that never read their answers
// ---------------------------------------------------------------------------

/// How a client that never reads its answers was disconnected.
struct Hog {
    /// From the first write to the disconnection: includes filling the socket buffers,
    /// which takes as long as k_proxy needs to answer megabytes of pipelined requests.
    closed_after: Duration,
    /// From the client's last write that made progress (k_proxy had stopped reading,
    /// because its own answers could no longer be written) to the disconnection: the
    /// write-stall bound itself, plus this client's 100 ms write-timeout granularity.
    after_last_progress: Duration,
}

/// Pipelines `GET /healthz` on a new connection and never reads; how it was disconnected
/// (None: still open at `give_up`).
fn pipeline_without_reading(port: u16, give_up: Duration) -> Option<Hog> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let batch = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(256);
    let started = Instant::now();
    let mut last_progress = started;
    let mut at = 0;
    while started.elapsed() < give_up {
        match s.write(&batch.as_bytes()[at..]) {
            Ok(0) => {}
            Ok(n) => {
                last_progress = Instant::now();
                at = (at + n) % batch.len();
            }
            // Our send buffer is full because k_proxy stopped reading: keep waiting.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Reset or broken pipe: k_proxy closed the connection.
            Err(_) => {
                return Some(Hog {
                    closed_after: started.elapsed(),
                    after_last_progress: last_progress.elapsed(),
                })
            }
        }
    }
    None
}

#[test]
fn clients_that_never_read_are_closed_at_the_write_bound_and_free_their_slots() {
    let dead = free_port();
    let (_proxy, port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{dead}"),
        &[
            "--gate",
            "soft",
            "--max-connections",
            "2",
            "--write-timeout",
            "2",
        ],
    );
    // Both slots taken by clients that pipeline requests and read nothing.
    let hog = move || loop {
        match pipeline_without_reading(port, Duration::from_secs(60)) {
            // Closed at accept: the start-up probe's slot was not free yet. Again.
            Some(hog) if hog.closed_after < Duration::from_millis(500) => {
                thread::sleep(Duration::from_millis(100))
            }
            other => break other,
        }
    };
    let hogs: Vec<_> = (0..2).map(|_| thread::spawn(hog)).collect();
    for hog in hogs {
        let hog = hog
            .join()
            .unwrap()
            .expect("a client that never reads must be disconnected, not held for ever");
        eprintln!(
            "write bound: closed {:?} after the last progress, {:?} after the start",
            hog.after_last_progress, hog.closed_after
        );
        // The 2 s bound, counted from when the writes stopped making progress; 1.5 s of
        // slack for timers and scheduling on a loaded machine (the old 20 s measured the
        // buffer filling too, and could not tell a 2 s bound from a 15 s one).
        assert!(
            hog.after_last_progress < Duration::from_millis(3500),
            "closed {:?} after the last progress (bound 2 s), {:?} after the start",
            hog.after_last_progress,
            hog.closed_after
        );
        assert!(
            hog.closed_after >= Duration::from_secs(2),
            "closed {:?} after the start, before the 2 s write bound could apply",
            hog.closed_after
        );
    }
    // Their slots are free again: a normal client is served.
    let r = c.healthz();
    assert_eq!(r.status, 200, "{}", r.ctx());
}

// ---------------------------------------------------------------------------
// A k_server port that accepts but never completes the TLS handshake
// ---------------------------------------------------------------------------

#[test]
fn a_tls_handshake_that_never_completes_is_502_at_the_connect_bound() {
    let certs = Certs::generate();
    // The kernel completes the TCP handshake from the backlog; nobody ever reads the
    // ClientHello.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = black_hole.local_addr().unwrap().port();
    let (_proxy, _pport, c) = start_proxy_plain_to_tls(
        &certs,
        port,
        &[
            "--upstream-connect-timeout",
            "1",
            "--upstream-timeout",
            "10",
        ],
    );
    let tok = c.login_ok("alice");
    let r = c.counter_get(&tok);
    r.expect_json_error(502, &["upstream_unavailable"]);
    assert!(
        r.elapsed < Duration::from_secs(4),
        "a stalled handshake must be cut at --upstream-connect-timeout (1 s), not wait for \
         --upstream-timeout (10 s): {:?}{}",
        r.elapsed,
        r.ctx()
    );
    drop(black_hole);
}
