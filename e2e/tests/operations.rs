//! Operating k_proxy: login throttling, the waiting-login bound, /metrics on the admin
//! listener, /readyz, the TLS version policy and certificate checks at start-up.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

/// k_proxy with a software key nobody ever touches (every key operation runs until
/// `--touch-timeout`), plus `extra` flags.
fn start_untouched_proxy(extra: &[&str]) -> (Proc, u16, Client) {
    let mut args = vec!["--gate", "soft", "--soft-behavior", "no-touch"];
    args.extend_from_slice(extra);
    start_proxy_plain("http://127.0.0.1:9", &args)
}

/// A login for `user` on its own thread, holding the key while it waits for a touch.
fn login_in_background(c: &Client, user: &'static str) -> thread::JoinHandle<Resp> {
    let c = c.clone();
    thread::spawn(move || c.login(user))
}

#[test]
fn refused_logins_ban_the_username_with_retry_after_but_not_other_users() {
    let (_p, _port, c) = start_proxy_plain(
        "http://127.0.0.1:9",
        &[
            "--gate",
            "soft",
            "--soft-behavior",
            "no-key",
            "--login-max-failures",
            "2",
            "--login-ban",
            "60",
        ],
    );
    c.login("mallory").expect_error(401, "no_key");
    c.login("mallory").expect_error(401, "no_key");
    let r = c.login("mallory");
    r.expect_json_error(429, &["login_throttled"]);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 must carry Retry-After{}", r.ctx()));
    assert!((55..=60).contains(&retry), "{}", r.ctx());
    // Another username is judged on its own record (the key is still absent: 401).
    c.login("alice").expect_error(401, "no_key");
}

#[test]
fn metrics_move_as_the_test_drives_them_and_readyz_follows_k_server() {
    let (mut server, sport) = start_server_plain();
    let admin = free_port();
    let (_p, _port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{sport}"),
        &[
            "--gate",
            "soft",
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
    );
    let before = scrape_metrics(admin);
    assert_eq!(
        metric_value(&before, "chromecard_sessions_live"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        metric_value(&before, "chromecard_sessions_undeleted"),
        Some(0.0),
        "{before}"
    );

    let tok = c.login_ok("alice");
    c.counter_post(&tok).expect(200);
    c.counter_post(&tok).expect(200);
    c.req("GET", "/resource/nope", &[&Client::bearer(&tok)], &[])
        .expect_json_error(404, &["not_found"]);
    c.login("bad name").expect_error(400, "invalid_username");

    let after = scrape_metrics(admin);
    assert_eq!(
        metric_value(&after, "chromecard_logins_total{outcome=\"ok\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric_value(
            &after,
            "chromecard_logins_total{outcome=\"invalid_username\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "chromecard_sessions_live"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric_value(
            &after,
            "chromecard_forwarded_requests_total{status=\"200\"}"
        ),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        metric_value(
            &after,
            "chromecard_forwarded_requests_total{status=\"404\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "chromecard_upstream_latency_seconds_count"),
        Some(3.0),
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "chromecard_gate_latency_seconds_count"),
        Some(1.0),
        "{after}"
    );

    // Readiness follows k_server; liveness does not.
    let ready = c.req("GET", "/readyz", &[], &[]);
    assert_eq!(ready.expect(200)["ready"], true, "{}", ready.ctx());
    // Nothing about the gate for an unauthenticated caller.
    assert!(
        !ready.body.contains("gate") && !ready.body.contains("SOFTWARE"),
        "{}",
        ready.ctx()
    );
    server.kill();
    c.req("GET", "/readyz", &[], &[])
        .expect_json_error(503, &["not_ready"]);
    c.healthz().expect(200);
    c.counter_post(&tok)
        .expect_json_error(502, &["upstream_unavailable"]);
    let down = scrape_metrics(admin);
    assert_eq!(
        metric_value(&down, "chromecard_forwarded_requests_total{status=\"502\"}"),
        Some(1.0),
        "{down}"
    );
    // Only /metrics lives on the admin listener.
    let other = curl([format!("http://127.0.0.1:{admin}/session/login")]);
    assert_eq!(other.status, 404, "{}", other.ctx());
}

/// A login for `user` that hangs up after `seconds`, sent from the loopback address `from`.
fn login_hanging_up(c: &Client, user: &str, from: &str, seconds: &str) -> Resp {
    let body = json!({ "username": user }).to_string();
    c.req(
        "POST",
        "/session/login",
        &["Content-Type: application/json"],
        &[
            "--data-binary",
            &body,
            "--interface",
            from,
            "--max-time",
            seconds,
        ],
    )
}

/// The login of `user` from the loopback address `from`.
fn login_from(c: &Client, user: &str, from: &str) -> Resp {
    let body = json!({ "username": user }).to_string();
    c.req(
        "POST",
        "/session/login",
        &["Content-Type: application/json"],
        &["--data-binary", &body, "--interface", from],
    )
}

#[test]
fn five_hang_ups_from_one_address_do_not_stop_a_real_login_from_another() {
    // The review's lock-out: five logins for a chosen name that hang up after 50 ms (each
    // while its key operation runs or waits), here at the default limits.
    let (p, _port, c) = start_proxy_plain(
        "http://127.0.0.1:9",
        &[
            "--gate",
            "soft",
            "--gate-level",
            "touch",
            "--soft-behavior",
            "slow",
        ],
    );
    for _ in 0..5 {
        let r = login_hanging_up(&c, "alice", "127.0.0.9", "0.05");
        assert_ne!(r.status, 200, "{}", r.ctx());
    }
    // Twenty more, for other names: the client address is not banned either.
    for i in 0..20 {
        login_hanging_up(&c, &format!("user{i}"), "127.0.0.9", "0.05");
    }
    let r = login_from(&c, "alice", "127.0.0.2");
    assert_eq!(r.status, 200, "{}", r.ctx());
    // Hanging up bans nobody: not even the address it came from.
    let r = login_from(&c, "alice", "127.0.0.9");
    assert_eq!(r.status, 200, "{}", r.ctx());
    let logs = p.stderr();
    assert!(!logs.contains("login_ban"), "{logs}");
    // The hang-ups did reach the key (each touch takes 250 ms, so they hung up during it).
    assert!(logs.contains("client_gone"), "{logs}");
}

#[test]
fn five_wrong_logins_from_one_address_still_ban_as_before() {
    // Default limits: five refused key operations for one name from one address.
    let (_p, _port, c) = start_proxy_plain(
        "http://127.0.0.1:9",
        &["--gate", "soft", "--soft-behavior", "no-key"],
    );
    for _ in 0..5 {
        login_from(&c, "alice", "127.0.0.9").expect_error(401, "no_key");
    }
    let r = login_from(&c, "alice", "127.0.0.9");
    r.expect_json_error(429, &["login_throttled"]);
    assert!(r.body.contains("this username"), "{}", r.ctx());
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 must carry Retry-After{}", r.ctx()));
    assert!((290..=300).contains(&retry), "{}", r.ctx());
    // Still banned on the next try (the ban is not a single refusal).
    login_from(&c, "alice", "127.0.0.9").expect_json_error(429, &["login_throttled"]);
    // Judged on its own record elsewhere: the key is asked (and still absent).
    login_from(&c, "alice", "127.0.0.2").expect_error(401, "no_key");
    // Other names from the banned address too, until the address's own budget is spent.
    login_from(&c, "bob", "127.0.0.9").expect_error(401, "no_key");
}

#[test]
fn a_client_that_hangs_up_near_the_touch_timeout_costs_its_address_not_the_username() {
    // No touch ever comes; each client gives up at about 3/4 of the 4 s touch timeout.
    // Hanging up must not be a free way to keep the key blinking: the address pays the
    // key time it held (two such hang-ups pass a budget of one refused login), while the
    // username is not banned anywhere.
    let (p, _port, c) = start_untouched_proxy(&[
        "--touch-timeout",
        "4",
        "--login-max-failures",
        "1",
        "--login-max-failures-per-address",
        "1",
    ]);
    for i in 1..=2 {
        let r = login_hanging_up(&c, "mallory", "127.0.0.9", "3");
        assert_ne!(r.status, 200, "{}", r.ctx());
        // The key operation is cancelled and the device freed before the next login.
        assert!(
            wait_until(Duration::from_secs(10), || p
                .stderr()
                .matches("client_gone")
                .count()
                >= i),
            "{}",
            p.stderr()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || p.stderr().contains("login_ban")),
        "{}",
        p.stderr()
    );
    let started = Instant::now();
    let r = login_from(&c, "mallory", "127.0.0.9");
    r.expect_json_error(429, &["login_throttled"]);
    assert!(r.body.contains("client address"), "{}", r.ctx());
    assert!(started.elapsed() < Duration::from_secs(3));
    // From another address the name is not banned: the key is asked again.
    login_hanging_up(&c, "mallory", "127.0.0.2", "1");
    // k_proxy notices the hang-up after curl has gone, and its log line reaches stderr
    // through the log writer thread: wait for it as for the first two.
    assert!(
        wait_until(Duration::from_secs(10), || p
            .stderr()
            .matches("client_gone")
            .count()
            >= 3),
        "{}",
        p.stderr()
    );
    let logs = p.stderr();
    assert_eq!(logs.matches("client_gone").count(), 3, "{logs}");
    assert_eq!(logs.matches("login_ban").count(), 1, "{logs}");
}

#[test]
fn a_login_queued_before_a_ban_is_refused_when_its_turn_at_the_key_comes() {
    let (p, _port, c) = start_untouched_proxy(&[
        "--touch-timeout",
        "2",
        "--device-wait",
        "5",
        "--login-max-failures",
        "1",
    ]);
    // The first login holds the key until its touch times out, which bans mallory...
    let first = login_in_background(&c, "mallory");
    wait_for_key_operation(&p, 1);
    // ...while a second one for mallory waits in the queue, admitted before the ban.
    let started = Instant::now();
    let second = c.login("mallory");
    second.expect_json_error(429, &["login_throttled"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused when the key became free, not after another touch wait{}",
        second.ctx()
    );
    first.join().unwrap().expect_error(401, "touch_timeout");
    // The key was used once.
    let logs = p.stderr();
    assert_eq!(logs.matches("gate: refused").count(), 1, "{logs}");
}

#[test]
fn waiting_logins_are_bounded() {
    let (p, _port, c) = start_untouched_proxy(&[
        "--touch-timeout",
        "3",
        "--device-wait",
        "5",
        "--max-waiting-logins",
        "1",
    ]);
    let first = login_in_background(&c, "alice");
    wait_for_key_operation(&p, 1);
    let started = Instant::now();
    let second = c.login("bob");
    second.expect_json_error(503, &["login_queue_full"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a full queue answers at once, not after the device wait{}",
        second.ctx()
    );
    first.join().unwrap().expect_error(401, "touch_timeout");
}

#[test]
fn tls12_is_refused_unless_allowed() {
    let certs = Certs::generate();
    let tls_flags = |extra: &[&str]| {
        let mut flags = vec![
            "--gate".to_owned(),
            "soft".to_owned(),
            "--tls-certfile".to_owned(),
            s(certs.proxy_crt()),
            "--tls-keyfile".to_owned(),
            s(certs.proxy_key()),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        flags
    };
    for (extra, tls12_ok) in [(&[][..], false), (&["--allow-tls12"][..], true)] {
        let port = free_port();
        let _proxy = Spawn::k_proxy()
            .args(["--port", &port.to_string(), "--proxy-token", PROXY_TOKEN])
            .args(tls_flags(extra))
            .start(port);
        let url = format!("https://127.0.0.1:{port}/healthz");
        let ca = s(certs.ca());
        let tls13 = curl(["--cacert", ca.as_str(), url.as_str()]);
        assert_eq!(tls13.status, 200, "{}", tls13.ctx());
        let tls12 = curl(["--cacert", ca.as_str(), "--tls-max", "1.2", url.as_str()]);
        if tls12_ok {
            assert_eq!(
                tls12.status,
                200,
                "--allow-tls12 must accept TLS 1.2{}",
                tls12.ctx()
            );
        } else {
            assert_eq!(
                tls12.status,
                0,
                "TLS 1.2 must be refused by default{}",
                tls12.ctx()
            );
        }
    }
}

/// A certificate from the chain's CA whose validity ended in 2020.
fn expired_certificate(certs: &Certs) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = certs.dir();
    let sh = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "old.key",
        "-out",
        "old.csr",
        "-subj",
        "/CN=k_proxy",
    ]);
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    std::fs::write(
        dir.join("old-ca.cnf"),
        "[ca]\ndefault_ca=c\n[c]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n",
    )
    .unwrap();
    sh(&[
        "ca",
        "-batch",
        "-config",
        "old-ca.cnf",
        "-cert",
        "ca.crt",
        "-keyfile",
        "ca.key",
        "-in",
        "old.csr",
        "-out",
        "old.crt",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200201000000Z",
        "-notext",
    ]);
    (dir.join("old.crt"), dir.join("old.key"))
}

#[test]
fn an_expired_certificate_is_refused_at_start_up() {
    require_tool("openssl", "version");
    let certs = Certs::generate();
    let (crt, key) = expired_certificate(&certs);
    let port = free_port();
    Spawn::k_proxy()
        .args([
            "--port",
            &port.to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--gate",
            "soft",
            "--tls-certfile",
            &s(&crt),
            "--tls-keyfile",
            &s(&key),
        ])
        .run_to_exit(Duration::from_secs(10))
        .assert_refused(&["expired", "old.crt"]);
}

#[test]
fn sighup_reloads_the_proxy_token_and_certificates_keeping_sessions() {
    let ours = Certs::generate();
    let theirs = Certs::generate();
    let (_server, sport) = start_server_tls(&ours);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("proxy-token");
    let listener_crt = dir.path().join("listener.crt");
    let listener_key = dir.path().join("listener.key");
    std::fs::write(&token_file, PROXY_TOKEN).unwrap();
    std::fs::copy(ours.proxy_crt(), &listener_crt).unwrap();
    std::fs::copy(ours.proxy_key(), &listener_key).unwrap();
    let port = free_port();
    let mut proxy = Spawn::k_proxy()
        .args([
            "--port",
            &port.to_string(),
            "--gate",
            "soft",
            "--server-base-url",
            &format!("https://127.0.0.1:{sport}"),
            "--server-ca-file",
            &s(ours.ca()),
            "--proxy-token-file",
            &s(&token_file),
            "--tls-certfile",
            &s(&listener_crt),
            "--tls-keyfile",
            &s(&listener_key),
            "--client-certfile",
            &s(ours.proxy_crt()),
            "--client-keyfile",
            &s(ours.proxy_key()),
        ])
        .start(port);
    let c = Client::tls(port, &ours.ca());
    let tok = c.login_ok("alice");
    c.counter_post(&tok).expect(200);

    // A new (wrong) proxy token takes effect on SIGHUP: k_server now refuses k_proxy.
    std::fs::write(&token_file, "a-rotated-token-k_server-does-not-know").unwrap();
    assert!(reload(&proxy), "{}", proxy.logs());
    c.counter_post(&tok)
        .expect_json_error(502, &["upstream_rejected_proxy"]);
    std::fs::write(&token_file, PROXY_TOKEN).unwrap();
    assert!(reload(&proxy), "{}", proxy.logs());
    c.counter_post(&tok).expect(200);

    // A new listener certificate (from another CA) is served to new connections.
    std::fs::copy(theirs.proxy_crt(), &listener_crt).unwrap();
    std::fs::copy(theirs.proxy_key(), &listener_key).unwrap();
    assert!(reload(&proxy), "{}", proxy.logs());
    Client::tls(port, &theirs.ca())
        .counter_post(&tok)
        .expect(200);
    assert_eq!(
        c.healthz().status,
        0,
        "the old CA must no longer verify k_proxy"
    );

    // A broken reload changes nothing.
    std::fs::write(&listener_crt, "not a certificate").unwrap();
    assert!(!reload(&proxy), "{}", proxy.logs());
    Client::tls(port, &theirs.ca())
        .counter_post(&tok)
        .expect(200);
    proxy.assert_running();
}

/// k_server with mutual TLS from files in `dir` (copies of `certs`' server certificate and
/// key, the CA named explicitly) and its proxy token in `dir`/proxy-token.
fn k_server_reloadable(certs: &Certs, dir: &std::path::Path, port: u16) -> Proc {
    std::fs::write(dir.join("proxy-token"), PROXY_TOKEN).unwrap();
    std::fs::copy(certs.server_crt(), dir.join("server.crt")).unwrap();
    std::fs::copy(certs.server_key(), dir.join("server.key")).unwrap();
    Spawn::k_server()
        .args([
            "--port",
            &port.to_string(),
            "--proxy-token-file",
            &s(dir.join("proxy-token")),
            "--tls-certfile",
            &s(dir.join("server.crt")),
            "--tls-keyfile",
            &s(dir.join("server.key")),
            "--client-ca-file",
            &s(certs.ca()),
        ])
        .start(port)
}

fn whoami_with_token(c: &Client, token: &str) -> Resp {
    c.req(
        "GET",
        "/resource/whoami",
        &[
            &format!("X-Proxy-Token: {token}"),
            "X-Chromecard-User: alice",
        ],
        &[],
    )
}

#[test]
fn k_server_sighup_reloads_the_proxy_token_the_old_one_stops_working() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = k_server_reloadable(&certs, dir.path(), port);
    let c = server_client_as_proxy(port, &certs);
    whoami_with_token(&c, PROXY_TOKEN).expect(200);

    let rotated = "a-rotated-proxy-token-of-forty-characters-or-so";
    std::fs::write(dir.path().join("proxy-token"), rotated).unwrap();
    assert!(reload(&server), "{}", server.logs());
    whoami_with_token(&c, rotated).expect(200);
    whoami_with_token(&c, PROXY_TOKEN).expect_json_error(401, &["invalid_proxy_token"]);
    server.assert_running();
}

#[test]
fn k_server_sighup_with_a_broken_certificate_keeps_serving_with_the_old_one() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = k_server_reloadable(&certs, dir.path(), port);
    let c = server_client_as_proxy(port, &certs);
    whoami_with_token(&c, PROXY_TOKEN).expect(200);

    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    // A token that would load: it must not be taken either (all or nothing).
    std::fs::write(
        dir.path().join("proxy-token"),
        "another-token-that-is-long-enough-1234",
    )
    .unwrap();
    assert!(!reload(&server), "{}", server.logs());
    server.assert_running();
    assert!(
        server.stderr().contains("server.crt"),
        "the failed reload must name the file: {}",
        server.logs()
    );
    // New connections get the old certificate; the old token still works.
    whoami_with_token(&c, PROXY_TOKEN).expect(200);
}

#[test]
fn k_server_sigterm_drains_an_in_flight_request() {
    use std::io::{Read, Write};
    let (mut server, port) = start_server_plain();
    let body = br#"{"value":"drained"}"#;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        conn,
        "PUT /resource/secrets/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Token: {PROXY_TOKEN}\r\n\
         X-Chromecard-User: alice\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // Half the body: the request is in k_server's hands, waiting for the rest.
    conn.write_all(&body[..5]).unwrap();
    conn.flush().unwrap();
    thread::sleep(Duration::from_millis(300));
    server.terminate_and_await_drain();
    conn.write_all(&body[5..]).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 20"),
        "the in-flight request must be answered: {answer:?}\n{}",
        server.logs()
    );
    let exit = server
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("k_server did not exit after SIGTERM\n{}", server.logs()));
    assert_eq!(exit.code(), Some(0), "{}", server.logs());
    assert!(
        server.stderr().contains("k_server stopped"),
        "{}",
        server.logs()
    );
}

#[test]
fn sigterm_cancels_a_login_waiting_for_a_touch_and_exits_zero() {
    let (mut proxy, _port, c) = start_untouched_proxy(&["--touch-timeout", "30"]);
    let waiting = login_in_background(&c, "alice");
    wait_for_key_operation(&proxy, 1);
    let started = Instant::now();
    proxy.signal("TERM");
    let answer = waiting.join().unwrap();
    answer.expect_json_error(503, &["shutting_down"]);
    // Within 5 s of the signal, not of this line.
    let exit = proxy
        .wait_exit(Duration::from_secs(5).saturating_sub(started.elapsed()))
        .unwrap_or_else(|| {
            panic!(
                "k_proxy did not exit within 5 s of SIGTERM:\n{}",
                proxy.logs()
            )
        });
    assert!(exit.success(), "exit status {exit:?}:\n{}", proxy.logs());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
