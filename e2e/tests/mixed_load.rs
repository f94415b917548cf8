//! Issue 14, "nothing lost under mixed load", against the real binaries:
//!
//! * one user sends 60 KB bodies that k_server answers without reading them (a PUT with
//!   the wrong content type, a POST to the counter, a bad secret name) while another
//!   increments the counter: no request of either gets a 502 (20,000 requests per shape,
//!   plain HTTP and the TLS split-VM shape with mutual TLS), and the counter ends at the
//!   number of increments that were answered 200;
//! * 50 concurrent oversized uploads, with `Expect: 100-continue` and without, each get
//!   their 413 JSON answer (none a reset), on the login and on a forwarded upload;
//! * a forwarded request that k_server never answered is sent once more, on a new
//!   connection, only when that is safe (idempotent, or never written), and only once.
//!
//! The load is driven by `curl --parallel` from generated config files: one curl process
//! per user, each keeping several keep-alive connections busy, which is what a browser or
//! a script does and fast enough for 20,000 requests in about a minute on two cores.
//! Nothing here asserts a timing; every wait is bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use chromecard_e2e::*;

/// The load tests are CPU-heavy: one at a time, so each gets the machine's two cores.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Requests per user and shape (two users: 20,000 per shape).
const PER_USER: usize = 10_000;
/// Connections each user's curl keeps busy at once.
const PARALLEL: usize = 6;
/// The early-answered body: 60 KB, under k_proxy's default 64 KiB limit.
const BODY_BYTES: usize = 60 * 1024;
/// How long one curl batch may take before it is killed (a hang, not slowness).
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// One transfer in a curl config file.
struct Transfer {
    method: &'static str,
    path: String,
    headers: Vec<String>,
    /// `data-binary` (read into memory) or, for the oversized uploads, `upload-file`.
    body: Option<Body>,
}

enum Body {
    Data(String),
    Upload(String),
}

/// What curl reported for one transfer.
#[derive(Debug)]
struct Outcome {
    status: u16,
    exit: i32,
    method: String,
    url: String,
    /// The file the answer's body was written to, if it was kept.
    output: Option<String>,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs one `curl --parallel` over `transfers` against `base` and returns one outcome per
/// transfer. `extra` lines go into every transfer's block (e.g. `cacert = ...`). With
/// `keep_bodies`, each answer's body is written to its own file under `dir`.
fn curl_batch(
    dir: &Path,
    name: &str,
    base: &str,
    transfers: &[Transfer],
    extra: &[String],
    parallel: usize,
    keep_bodies: bool,
) -> Vec<Outcome> {
    // The write-out line is split on spaces: no space in the file names.
    let name = name.replace(' ', "-");
    let name = name.as_str();
    let mut config = String::new();
    for (i, t) in transfers.iter().enumerate() {
        let output = if keep_bodies {
            dir.join(format!("{name}-{i}.out")).display().to_string()
        } else {
            "/dev/null".to_string()
        };
        let _ = writeln!(config, "url = {}", quote(&format!("{base}{}", t.path)));
        let _ = writeln!(config, "request = {}", quote(t.method));
        for h in &t.headers {
            let _ = writeln!(config, "header = {}", quote(h));
        }
        match &t.body {
            Some(Body::Data(file)) => {
                let _ = writeln!(config, "data-binary = {}", quote(&format!("@{file}")));
            }
            Some(Body::Upload(file)) => {
                let _ = writeln!(config, "upload-file = {}", quote(file));
            }
            None => {}
        }
        for line in extra {
            let _ = writeln!(config, "{line}");
        }
        let _ = writeln!(config, "output = {}", quote(&output));
        let _ = writeln!(
            config,
            "write-out = \"%{{http_code}} %{{exitcode}} %{{method}} %{{url_effective}} {output}\\n\""
        );
        let _ = writeln!(config, "max-time = 60");
        if i + 1 < transfers.len() {
            let _ = writeln!(config, "next");
        }
    }
    let config_path = dir.join(format!("{name}.curlrc"));
    fs::write(&config_path, config).expect("write curl config");
    let ran = run(
        Command::new("curl")
            .arg("--disable")
            .arg("--silent")
            .arg("--noproxy")
            .arg("*")
            .arg("--parallel")
            .arg("--parallel-max")
            .arg(parallel.to_string())
            .arg("--config")
            .arg(&config_path),
        None,
        BATCH_TIMEOUT,
    );
    assert!(
        !ran.timed_out,
        "curl batch {name} did not finish within {BATCH_TIMEOUT:?}"
    );
    let outcomes: Vec<Outcome> = ran
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut f = line.split(' ');
            let mut next = || f.next().unwrap_or_default().to_string();
            let status = next().parse().unwrap_or(0);
            let exit = next().parse().unwrap_or(-1);
            let method = next();
            let url = next();
            let output = Some(next()).filter(|o| keep_bodies && !o.is_empty());
            Outcome {
                status,
                exit,
                method,
                url,
                output,
            }
        })
        .collect();
    assert_eq!(
        outcomes.len(),
        transfers.len(),
        "curl batch {name} reported {} of {} transfers ({}); stderr:\n{}",
        outcomes.len(),
        transfers.len(),
        ran.describe_status(),
        ran.stderr
    );
    outcomes
}

/// A login through `c` for `user`, returning the bearer token.
fn token(c: &Client, user: &str) -> String {
    c.login_ok(user)
}

/// The two users' transfers: the early-answered bodies of `sender`, the increments of
/// `counter`.
fn mixed_transfers(dir: &Path, sender: &str, counter: &str) -> (Vec<Transfer>, Vec<Transfer>) {
    let body = dir.join("body-60k.json");
    // JSON that a k_server reading it would accept as a secret: only the early answers
    // (not the content) make k_server leave it unread.
    let value = "v".repeat(BODY_BYTES - 20);
    fs::write(&body, format!(r#"{{"value":"{value}"}}"#)).expect("write body");
    let body = body.display().to_string();
    let auth = |tok: &str| format!("Authorization: Bearer {tok}");
    let mut early = Vec::with_capacity(PER_USER);
    for i in 0..PER_USER {
        let (method, path, content_type) = match i % 3 {
            // 415 from k_server before the body is read.
            0 => ("PUT", "/resource/secrets/mixed", "text/plain"),
            // 200: the counter does not read a body.
            1 => ("POST", "/resource/counter", "application/json"),
            // 400 invalid_name from k_server before the body is read.
            _ => ("PUT", "/resource/secrets/bad~name", "application/json"),
        };
        early.push(Transfer {
            method,
            path: path.to_string(),
            headers: vec![
                auth(sender),
                format!("Content-Type: {content_type}"),
                // No 100-continue round trip: the body follows the head at once.
                "Expect:".to_string(),
            ],
            body: Some(Body::Data(body.clone())),
        });
    }
    let increments = (0..PER_USER)
        .map(|_| Transfer {
            method: "POST",
            path: "/resource/counter".to_string(),
            headers: vec![auth(counter)],
            body: None,
        })
        .collect();
    (early, increments)
}

/// Tallies outcomes by (method path, status) for the report.
fn tally(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        let path = o
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or(&o.url);
        *t.entry(format!(
            "{} {path} -> {} (exit {})",
            o.method, o.status, o.exit
        ))
        .or_default() += 1;
    }
    t
}

fn is_counter_post(o: &Outcome) -> bool {
    o.method == "POST" && o.url.ends_with("/resource/counter")
}

/// Both users at once, then the checks of issue 14: no 502, no transfer without an HTTP
/// answer, every answer the one its request deserves, the counter equal to the 200s.
fn mixed_load(shape: &str, c: &Client, extra: &[String]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sender = token(c, "mallory");
    let counter = token(c, "alice");
    let (early, increments) = mixed_transfers(dir.path(), &sender, &counter);
    let before = counter_of(&c.counter_get(&counter));

    let started = std::time::Instant::now();
    let (early_out, incr_out) = thread::scope(|s| {
        let a =
            s.spawn(|| curl_batch(dir.path(), "early", &c.base, &early, extra, PARALLEL, false));
        let b = s.spawn(|| {
            curl_batch(
                dir.path(),
                "increments",
                &c.base,
                &increments,
                extra,
                PARALLEL,
                false,
            )
        });
        (
            a.join().expect("early batch"),
            b.join().expect("increment batch"),
        )
    });
    let elapsed = started.elapsed();

    let all: Vec<&Outcome> = early_out.iter().chain(incr_out.iter()).collect();
    let bad_gateway = all.iter().filter(|o| o.status == 502).count();
    let no_answer = all.iter().filter(|o| o.status == 0 || o.exit != 0).count();
    let incr_ok = incr_out.iter().filter(|o| o.status == 200).count();
    let early_counter_ok = early_out
        .iter()
        .filter(|o| is_counter_post(o) && o.status == 200)
        .count();
    eprintln!(
        "{shape}: {} requests in {elapsed:?}: {bad_gateway} x 502, {no_answer} without an HTTP answer; \
         the incrementing user got {incr_ok} x 200 of {PER_USER}\n  sender: {:#?}\n  incrementer: {:#?}",
        all.len(),
        tally(&early_out),
        tally(&incr_out)
    );
    assert_eq!(
        bad_gateway,
        0,
        "{shape}: {bad_gateway} of {} requests got 502 (issue 14)",
        all.len()
    );
    assert_eq!(
        no_answer,
        0,
        "{shape}: {no_answer} of {} requests got no HTTP answer",
        all.len()
    );
    for o in &early_out {
        let expected = if is_counter_post(o) {
            200
        } else if o.url.ends_with("/bad~name") {
            400
        } else {
            415
        };
        assert_eq!(o.status, expected, "{shape}: unexpected answer {o:?}");
    }
    assert_eq!(
        incr_ok, PER_USER,
        "{shape}: every increment must be answered 200"
    );

    // Every 200 to POST /resource/counter counted exactly once, and nothing else did
    // (the sender's counter POSTs increment too: the body is ignored, not refused).
    let after = counter_of(&c.counter_get(&counter));
    assert_eq!(
        after - before,
        (incr_ok + early_counter_ok) as u64,
        "{shape}: the counter moved by {} but {incr_ok} + {early_counter_ok} increments were answered 200",
        after - before
    );
}

// The two shapes also cover k_proxy's two ways of running connections: plain on the
// shared work-stealing runtime (--connection-threads 0), TLS on three connection worker
// threads (more than this machine may have CPUs, so that connections and their pool
// shares spread over several workers). Every other test runs the default, one per CPU.
#[test]
fn mixed_load_plain_no_502_and_the_counter_matches() {
    let _one = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (mut server, sport) = start_server_plain();
    let (mut proxy, _pport, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{sport}"),
        &["--gate", "soft", "--connection-threads", "0"],
    );
    mixed_load("plain", &c, &[]);
    server.assert_running();
    proxy.assert_running();
}

#[test]
fn mixed_load_tls_split_vm_no_502_and_the_counter_matches() {
    let _one = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let certs = Certs::generate();
    let (mut server, _sport, mut proxy, c) =
        start_tls_chain_with(&certs, &["--gate", "soft", "--connection-threads", "3"]);
    let extra = [format!("cacert = {}", quote(&s(certs.ca())))];
    mixed_load("tls", &c, &extra);
    server.assert_running();
    proxy.assert_running();
}

/// How many oversized uploads run at once.
const UPLOADS: usize = 50;
/// The oversized body: 20 MB.
const HUGE_BYTES: u64 = 20 * 1024 * 1024;

/// `UPLOADS` concurrent uploads of a 20 MB file to `path`, half with
/// `Expect: 100-continue` and half without; each must get its 413 JSON answer.
fn oversized_uploads(what: &str, c: &Client, path: &str, headers: &[String], extra: &[String]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = dir.path().join("huge.json");
    let file = fs::File::create(&huge).expect("create huge body");
    file.set_len(HUGE_BYTES).expect("size huge body");
    drop(file);
    let huge = huge.display().to_string();
    let transfers: Vec<Transfer> = (0..UPLOADS)
        .map(|i| {
            let mut h = headers.to_vec();
            h.push(if i % 2 == 0 {
                "Expect: 100-continue".to_string()
            } else {
                "Expect:".to_string()
            });
            Transfer {
                method: "POST",
                path: path.to_string(),
                headers: h,
                body: Some(Body::Upload(huge.clone())),
            }
        })
        .collect();
    // The POST method for /resource: k_proxy refuses the size before it forwards anything.
    let outcomes = curl_batch(dir.path(), what, &c.base, &transfers, extra, UPLOADS, true);
    let mut failures = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        let body = o
            .output
            .as_deref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        let code = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        if o.status != 413 || o.exit != 0 || code.as_deref() != Some("body_too_large") {
            failures.push(format!("upload {i}: {o:?} body {body:?}"));
        }
    }
    eprintln!(
        "{what}: {} uploads, {} without their 413 JSON",
        outcomes.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {UPLOADS} oversized uploads did not get their 413:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fifty_oversized_uploads_each_get_their_413() {
    let _one = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (mut server, sport) = start_server_plain();
    let (mut proxy, _pport, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    let json = "Content-Type: application/json".to_string();
    oversized_uploads(
        "plain login",
        &c,
        "/session/login",
        std::slice::from_ref(&json),
        &[],
    );
    oversized_uploads(
        "plain resource",
        &c,
        "/resource/counter",
        &[json.clone(), format!("Authorization: Bearer {tok}")],
        &[],
    );
    // The connections were closed cleanly: k_proxy and k_server serve on.
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);
    server.assert_running();
    proxy.assert_running();

    let certs = Certs::generate();
    let (mut server, _sport, mut proxy, c) = start_tls_chain(&certs);
    let extra = [format!("cacert = {}", quote(&s(certs.ca())))];
    let tok = c.login_ok("alice");
    oversized_uploads(
        "tls login",
        &c,
        "/session/login",
        std::slice::from_ref(&json),
        &extra,
    );
    oversized_uploads(
        "tls resource",
        &c,
        "/resource/secrets/big",
        &[json, format!("Authorization: Bearer {tok}")],
        &extra,
    );
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);
    server.assert_running();
    proxy.assert_running();
}

// ---------------------------------------------------------------------------
// The retry policy, against a k_server stand-in that hangs up without answering
// ---------------------------------------------------------------------------

/// An upstream that reads each request whole and then hangs up without a word while
/// `hang_ups` lasts, and answers `200 {"ok":true}` (with `Connection: close`) after.
struct HangUp {
    port: u16,
    hang_ups: Arc<AtomicUsize>,
    /// Method of every request read, in order.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl HangUp {
    fn start() -> HangUp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let hang_ups = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, sn, st) = (hang_ups.clone(), seen.clone(), stop.clone());
        let acceptor = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (h, sn) = (h.clone(), sn.clone());
                        thread::spawn(move || hang_up_connection(stream, &h, &sn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HangUp {
            port,
            hang_ups,
            seen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The methods read since the last call.
    fn take_seen(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn hang_up_connection(mut s: TcpStream, hang_ups: &AtomicUsize, seen: &Mutex<Vec<String>>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let method = head.split(' ').next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(method);
    let hang_up = hang_ups
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if !hang_up {
        let body = r#"{"ok":true}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    // Dropped: a hang-up without an answer, or the end of the answered exchange.
}

#[test]
fn a_request_k_server_never_answered_is_retried_once_and_only_when_safe() {
    let up = HangUp::start();
    let (mut proxy, _pport, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{}", up.port),
        &["--gate", "soft", "--upstream-timeout", "10"],
    );
    let tok = c.login_ok("alice");
    let bearer = Client::bearer(&tok);
    let json = "Content-Type: application/json";
    let hang_up = |n: usize| up.hang_ups.store(n, Ordering::SeqCst);

    // Idempotent methods: the first attempt meets a hang-up, the retry is answered.
    hang_up(1);
    c.req("GET", "/resource/thing", &[&bearer], &[]).expect(200);
    assert_eq!(up.take_seen(), ["GET", "GET"], "a GET is retried once");
    hang_up(1);
    c.req(
        "PUT",
        "/resource/secrets/x",
        &[&bearer, json],
        &["--data-binary", r#"{"value":"v"}"#],
    )
    .expect(200);
    assert_eq!(up.take_seen(), ["PUT", "PUT"], "a PUT is retried once");

    // Once, not more: two hang-ups in a row are a 502.
    hang_up(2);
    c.req("GET", "/resource/thing", &[&bearer], &[])
        .expect_error(502, "upstream_unavailable");
    assert_eq!(up.take_seen(), ["GET", "GET"], "a GET is retried once only");

    // A POST that reached k_server is never sent twice: it might have counted.
    hang_up(1);
    c.counter_post(&tok)
        .expect_error(502, "upstream_unavailable");
    assert_eq!(
        up.take_seen(),
        ["POST"],
        "a POST that was sent is not retried"
    );
    c.counter_post(&tok).expect(200);
    assert_eq!(up.take_seen(), ["POST"]);
    proxy.assert_running();
}
