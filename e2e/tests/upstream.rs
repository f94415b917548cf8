//! Upstream faults: k_server down or hanging gives JSON 502/504, quickly.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use chromecard_e2e::*;

#[test]
fn upstream_down_gives_502() {
    let dead = free_port();
    let (mut p, _port, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    for _ in 0..2 {
        let r = c.counter_post(&tok);
        r.expect_error(502, "upstream_unavailable");
        assert!(
            r.elapsed < Duration::from_secs(2),
            "502 for a closed upstream port took {:?} (limit 2 s){}",
            r.elapsed,
            r.ctx()
        );
    }
    // The session survives an upstream fault.
    c.status(&tok).expect(200);
    p.assert_running();
}

#[test]
fn upstream_restarted_is_used_again() {
    // k_server goes away (502) and comes back on the same port: k_proxy's pool recovers.
    let (mut server, sport) = start_server_plain();
    let (mut p, _port, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);
    let state = server.state_home().to_path_buf();
    server.kill();
    c.counter_post(&tok)
        .expect_error(502, "upstream_unavailable");
    let _server2 = Spawn::k_server()
        .args(["--port", &sport.to_string(), "--proxy-token", PROXY_TOKEN])
        .state_home(&state)
        .start(sport);
    assert_eq!(counter_of(&c.counter_post(&tok)), 2);
    p.assert_running();
}

/// Accepts connections and never answers, until dropped.
struct Tarpit {
    port: u16,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Tarpit {
    fn start() -> Tarpit {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (st, h) = (stop.clone(), held.clone());
        let thread = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => h.lock().unwrap().push(s),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Tarpit {
            port,
            stop,
            held,
            thread: Some(thread),
        }
    }
    fn accepted(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn upstream_hanging_gives_504() {
    let pit = Tarpit::start();
    let (mut p, _port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{}", pit.port),
        &["--gate", "soft", "--upstream-timeout", "1"],
    );
    let tok = c.login_ok("alice");
    let r = c.counter_post(&tok);
    r.expect_error(504, "upstream_timeout");
    assert!(
        r.elapsed < Duration::from_secs(3),
        "504 with --upstream-timeout 1 took {:?} (limit 3 s){}",
        r.elapsed,
        r.ctx()
    );
    assert!(
        r.elapsed >= Duration::from_millis(800),
        "504 after only {:?}: the timeout did not wait ~1 s{}",
        r.elapsed,
        r.ctx()
    );
    assert!(
        pit.accepted() >= 1,
        "k_proxy never connected to the fake upstream"
    );
    c.status(&tok).expect(200);
    p.assert_running();
}

/// Answers every connection's first request with `answer`, then closes it.
fn fixed_upstream(answer: Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = s.write_all(&answer);
        }
    });
    port
}

/// An answer k_server began but k_proxy cannot take whole is a 502 that says which: too
/// large, or cut off (not "could not be reached"); k_proxy keeps serving.
#[test]
fn upstream_answers_too_large_or_cut_off_give_502_saying_so() {
    let big = 2 * 1024 * 1024;
    let mut too_large = format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n").into_bytes();
    too_large.resize(too_large.len() + big, b'x');
    let cut_off = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"counter\":".to_vec();
    for (answer, sentence) in [
        (too_large, "larger than k_proxy forwards"),
        (cut_off, "cut off before its end"),
    ] {
        let port = fixed_upstream(answer);
        let (mut p, _port, c) =
            start_proxy_plain(&format!("http://127.0.0.1:{port}"), &["--gate", "soft"]);
        let tok = c.login_ok("alice");
        let r = c.req("GET", "/resource/counter", &[&Client::bearer(&tok)], &[]);
        r.expect_error(502, "upstream_unavailable");
        assert!(r.body.contains(sentence), "{}", r.ctx());
        c.status(&tok).expect(200);
        p.assert_running();
    }
}
