//! k_server's durable store through the whole chain: a SIGKILL in the middle of 64
//! concurrent increments loses no acknowledged increment and never hands out a value
//! twice; store faults at start-up are clear refusals, never a reset to zero.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

const CLIENTS: usize = 64;
/// Acknowledged increments wanted before the kill and again after the restart.
const OK_BEFORE_KILL: u64 = 200;
const OK_AFTER_RESTART: u64 = 200;
/// Bound on each phase, so a broken chain fails the test instead of hanging it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive HTTP/1.1 connection to k_proxy (plain HTTP), std only.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Writes `request`, reads one response: (status, body, whether the server closes
    /// the connection after it).
    fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, String, bool)> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
    }
}

/// What one client thread saw.
#[derive(Default)]
struct Seen {
    attempts: u64,
    values: Vec<u64>,
    other_statuses: Vec<u16>,
    io_errors: u64,
}

/// Shared progress, for the phases of the test.
#[derive(Default)]
struct Progress {
    ok: AtomicU64,
    stop: AtomicBool,
}

/// Increments through k_proxy until told to stop. Every request written (or tried) is
/// an attempt; only a 200 with a counter is an acknowledged increment.
fn client(port: u16, token: String, progress: Arc<Progress>) -> Seen {
    let request = format!(
        "POST /resource/counter HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes();
    let mut seen = Seen::default();
    let mut conn: Option<Conn> = None;
    while !progress.stop.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(port) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    seen.io_errors += 1;
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        seen.attempts += 1;
        match c.exchange(&request) {
            Ok((200, body, close)) => {
                if close {
                    conn = None;
                }
                let value = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("counter").and_then(Value::as_u64))
                    .unwrap_or_else(|| panic!("a 200 answer without a counter: {body}"));
                seen.values.push(value);
                progress.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, _, close)) => {
                if close {
                    conn = None;
                }
                seen.other_statuses.push(status);
                // k_server is down: do not spin.
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                seen.io_errors += 1;
                conn = None;
            }
        }
    }
    seen
}

fn wait_for_ok(progress: &Progress, at_least: u64, what: &str, procs: &mut [&mut Proc]) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while progress.ok.load(Ordering::SeqCst) < at_least {
        for p in procs.iter_mut() {
            p.assert_running();
        }
        if Instant::now() > deadline {
            progress.stop.store(true, Ordering::SeqCst);
            panic!(
                "{what}: only {} acknowledged increments within {PHASE_TIMEOUT:?} (wanted {at_least})",
                progress.ok.load(Ordering::SeqCst)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn start_k_server(certs: &Certs, port: u16, data_dir: &std::path::Path) -> Proc {
    k_server_tls(certs, port)
        .args(["--data-dir", &s(data_dir)])
        .start(port)
}

#[test]
fn sigkill_mid_run_loses_no_acknowledged_increment_and_repeats_no_value() {
    let certs = Certs::generate();
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("store");
    let sport = free_port();
    let mut server = start_k_server(&certs, sport, &data_dir);
    // k_proxy: plain HTTP toward the clients, mutual TLS toward k_server.
    let (mut proxy, pport, chain) =
        start_proxy_plain_to_tls(&certs, sport, &["--upstream-timeout", "5"]);
    let token = chain.login_ok("alice");

    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (token, progress) = (token.clone(), progress.clone());
            thread::spawn(move || client(pport, token, progress))
        })
        .collect();

    wait_for_ok(
        &progress,
        OK_BEFORE_KILL,
        "before the kill",
        &mut [&mut server, &mut proxy],
    );
    // SIGKILL while 64 clients have requests in flight: no drain, no clean close.
    server.kill();
    let ok_at_kill = progress.ok.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(300));
    let mut server = start_k_server(&certs, sport, &data_dir);
    wait_for_ok(
        &progress,
        ok_at_kill + OK_AFTER_RESTART,
        "after the restart",
        &mut [&mut server, &mut proxy],
    );
    progress.stop.store(true, Ordering::SeqCst);

    let mut attempts = 0;
    let mut io_errors = 0;
    let mut values = Vec::new();
    let mut statuses = Vec::new();
    for c in clients {
        let seen = c.join().expect("client thread");
        attempts += seen.attempts;
        io_errors += seen.io_errors;
        values.extend(seen.values);
        statuses.extend(seen.other_statuses);
    }
    let final_counter = counter_of(&chain.counter_get(&token));
    let acknowledged = values.len() as u64;
    let context = format!(
        "\n  attempts {attempts}, acknowledged (200) {acknowledged}, other statuses {}, I/O errors {io_errors}, \
         final counter {final_counter}, acknowledged before the kill >= {ok_at_kill}",
        statuses.len()
    );
    eprintln!("crash run:{context}");

    let distinct: HashSet<u64> = values.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        values.len(),
        "every 200 answer must carry a distinct counter value{context}"
    );
    assert!(
        final_counter >= acknowledged,
        "an acknowledged increment was lost: the counter is below the number of 200 answers{context}"
    );
    assert!(
        final_counter <= attempts,
        "the counter is above the number of attempts{context}"
    );
    let highest = values.iter().copied().max().unwrap_or(0);
    assert!(
        highest <= final_counter,
        "a value above the final counter ({highest}) was handed out{context}"
    );
    // Statuses other than 200 are the outage, reported as k_proxy's upstream errors.
    for status in &statuses {
        assert!(
            (502..=504).contains(status),
            "unexpected status {status} during the crash run{context}"
        );
    }
    server.assert_running();
    proxy.assert_running();
}

#[test]
fn second_k_server_on_the_same_data_dir_is_refused_and_the_first_keeps_counting() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("store");
    let port = free_port();
    let first = Spawn::k_server()
        .args([
            "--port",
            &port.to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--data-dir",
            &s(&data_dir),
        ])
        .start(port);
    let k = Client::plain(port);
    let h = proxy_headers("alice");
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    assert_eq!(counter_of(&k.req("POST", "/resource/counter", &h, &[])), 1);

    let other = free_port();
    Spawn::k_server()
        .args([
            "--port",
            &other.to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--data-dir",
            &s(&data_dir),
        ])
        .run_to_exit(Duration::from_secs(15))
        .assert_refused(&[
            "locked by another process",
            &s(data_dir.join("k_server.redb")),
        ]);

    assert_eq!(counter_of(&k.req("POST", "/resource/counter", &h, &[])), 2);
    drop(first);
}

#[test]
fn corrupt_store_file_is_refused_and_left_alone() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("store");
    fs::create_dir(&data_dir).expect("mkdir");
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let file = data_dir.join("k_server.redb");
    let garbage = b"this is not a redb file, and k_server must not replace it\n".repeat(64);
    fs::write(&file, &garbage).expect("write");

    Spawn::k_server()
        .args([
            "--port",
            &free_port().to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--data-dir",
            &s(&data_dir),
        ])
        .run_to_exit(Duration::from_secs(15))
        .assert_refused(&["corrupt", &s(&file), "--data-dir"]);
    assert_eq!(
        fs::read(&file).expect("read"),
        garbage,
        "the store file must be left exactly as it was"
    );
}

#[test]
fn group_writable_data_dir_is_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("store");
    fs::create_dir(&data_dir).expect("mkdir");
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o770)).expect("chmod");
    Spawn::k_server()
        .args([
            "--port",
            &free_port().to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--data-dir",
            &s(&data_dir),
        ])
        .run_to_exit(Duration::from_secs(15))
        .assert_refused(&["chmod 0700", &s(&data_dir)]);
}
