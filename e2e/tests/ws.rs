//! WebSockets through the chain (issue 17): single-use tickets (every refusal is a 401
//! JSON answer before any upgrade, and no ticket reaches a log line), live events over
//! the mutual-TLS hop for their own user only, the socket closed within a second of its
//! session ending, and the bounds. The ticket's expiry is tested on an injected clock in
//! k_proxy (ws.rs); here the real binaries run.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use chromecard_e2e::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const UPGRADE: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

struct Chain {
    _certs: Certs,
    _server: Proc,
    proxy: Proc,
    server_logs: Box<dyn Fn() -> String>,
    port: u16,
    c: Client,
}

/// k_server with mutual TLS, k_proxy (plain towards the test, mutual TLS to k_server).
fn chain(extra: &[&str]) -> Chain {
    let certs = Certs::generate();
    let (server, sport) = start_server_tls(&certs);
    let (proxy, port, c) = start_proxy_plain_to_tls(&certs, sport, extra);
    let server_dir = server.dir().to_path_buf();
    Chain {
        _certs: certs,
        _server: server,
        proxy,
        server_logs: Box::new(move || {
            let mut all = String::new();
            for entry in std::fs::read_dir(&server_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.path().is_file() {
                    all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
            all
        }),
        port,
        c,
    }
}

fn origin(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// `POST /session/ws-ticket` with Bearer `tok` and the Origin header `origin`.
fn mint(c: &Client, tok: &str, origin: Option<&str>) -> Resp {
    let origin_h = origin.map(|o| format!("Origin: {o}"));
    let mut headers = vec![Client::bearer(tok)];
    headers.extend(origin_h);
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    c.req("POST", "/session/ws-ticket", &headers, &[])
}

fn ticket(c: &Client, tok: &str, origin: Option<&str>) -> String {
    let v = mint(c, tok, origin).expect(200);
    assert_eq!(v["expires_in"], json!(30));
    let t = v["ticket"].as_str().unwrap().to_string();
    assert!(
        t.len() == 43
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{t}"
    );
    t
}

type Socket = WebSocket<TcpStream>;

/// Opens `/resource/<stream>/events?ticket=` with the given Origin and extra headers.
fn connect(
    port: u16,
    stream: &str,
    ticket: &str,
    origin: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Socket, (u16, Value)> {
    let url = format!("ws://127.0.0.1:{port}/resource/{stream}/events?ticket={ticket}");
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match tungstenite::client(request, tcp) {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(socket)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let body = response.body().clone().unwrap_or_default();
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Err((response.status().as_u16(), value))
        }
        Err(err) => panic!("handshake failed: {err}"),
    }
}

fn open(port: u16, stream: &str, ticket: &str) -> Socket {
    connect(port, stream, ticket, Some(&origin(port)), &[])
        .unwrap_or_else(|e| panic!("refused: {e:?}"))
}

/// The next text message as JSON, or None if none comes within `wait`.
fn next_event(socket: &mut Socket, wait: Duration) -> Option<Value> {
    socket.get_mut().set_read_timeout(Some(wait)).unwrap();
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(err) => panic!("socket error: {err}"),
        }
    }
}

/// Reads until the close frame; returns (code, reason) and when it came.
fn wait_close(socket: &mut Socket, wait: Duration) -> (u16, String, Instant) {
    socket.get_mut().set_read_timeout(Some(wait)).unwrap();
    loop {
        match socket.read() {
            Ok(Message::Close(Some(frame))) => {
                return (
                    u16::from(frame.code),
                    frame.reason.to_string(),
                    Instant::now(),
                )
            }
            Ok(Message::Close(None)) => panic!("closed without a code"),
            Ok(_) => continue,
            Err(err) => panic!("no close frame within {wait:?}: {err}"),
        }
    }
}

fn expect_refused(r: Result<Socket, (u16, Value)>, status: u16, code: &str) {
    match r {
        Ok(_) => panic!("upgraded; expected {status} {code}"),
        Err((got, body)) => {
            assert_eq!(got, status, "{body}");
            assert_eq!(body["error"], json!(code), "{body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}

#[test]
fn every_ticket_refusal_is_a_401_before_any_upgrade_and_no_ticket_is_logged() {
    let ch = chain(&[]);
    let (c, port) = (&ch.c, ch.port);
    let me = origin(port);
    let alice = c.login_ok("alice");
    let alice2 = c.login_ok("alice");
    let bob = c.login_ok("bob");
    let mut minted = Vec::new();
    let mut take = |tok: &str, o: Option<&str>| {
        let t = ticket(c, tok, o);
        minted.push(t.clone());
        t
    };

    // Missing, malformed, unknown: curl shows the plain answer (no 101, no Upgrade).
    let events = |query: &str, extra: &[&str]| {
        let mut headers: Vec<&str> = UPGRADE.to_vec();
        headers.extend_from_slice(extra);
        c.req(
            "GET",
            &format!("/resource/counter/events{query}"),
            &headers,
            &[],
        )
    };
    for (query, code) in [
        ("", "missing_ticket"),
        ("?ticket=", "malformed_ticket"),
        ("?ticket=abc", "malformed_ticket"),
        (
            "?ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
            "malformed_ticket",
        ),
        (
            "?ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "invalid_ticket",
        ),
    ] {
        let r = events(query, &[]);
        r.expect_error(401, code);
        assert!(
            r.header("upgrade").is_none() && r.header("sec-websocket-accept").is_none(),
            "{}",
            r.ctx()
        );
    }

    // A good ticket opens once; the replay is refused.
    let t = take(&alice, Some(&me));
    let mut socket = open(port, "counter", &t);
    assert_eq!(
        next_event(&mut socket, Duration::from_secs(5)).unwrap()["type"],
        json!("counter")
    );
    expect_refused(
        connect(port, "counter", &t, Some(&me), &[]),
        401,
        "invalid_ticket",
    );
    events(&format!("?ticket={t}"), &[]).expect_error(401, "invalid_ticket");

    // Another Origin than the one that asked (and a ticket from no Origin needs none).
    let t = take(&alice, Some(&me));
    expect_refused(
        connect(
            port,
            "counter",
            &t,
            Some(&format!("http://localhost:{port}")),
            &[],
        ),
        401,
        "origin_mismatch",
    );
    let t = take(&alice, Some(&me));
    expect_refused(
        connect(port, "counter", &t, None, &[]),
        401,
        "origin_mismatch",
    );
    let t = take(&alice, None);
    expect_refused(
        connect(port, "counter", &t, Some(&me), &[]),
        401,
        "origin_mismatch",
    );
    assert!(connect(port, "counter", &take(&alice, None), None, &[]).is_ok());
    // A page of another origin gets no ticket at all.
    mint(c, &alice, Some("http://attacker.example"))
        .expect_json_error(403, &["origin_not_allowed"]);
    // Without a session, no ticket.
    c.req("POST", "/session/ws-ticket", &[], &[])
        .expect_error(401, "missing_token");

    // Another session's credential on the upgrade (same user, and another user).
    for other in [&alice2, &bob] {
        let t = take(&alice, Some(&me));
        let bearer = format!("Bearer {other}");
        expect_refused(
            connect(
                port,
                "counter",
                &t,
                Some(&me),
                &[("authorization", &bearer)],
            ),
            401,
            "ticket_session_mismatch",
        );
    }
    // Its own session's credential is fine.
    let t = take(&alice, Some(&me));
    let bearer = format!("Bearer {alice}");
    assert!(connect(
        port,
        "counter",
        &t,
        Some(&me),
        &[("authorization", &bearer)]
    )
    .is_ok());

    // A ticket of a session that ended since.
    let t = take(&alice2, Some(&me));
    c.logout(&alice2).expect(200);
    expect_refused(
        connect(port, "counter", &t, Some(&me), &[]),
        401,
        "logged_out",
    );

    // No log line holds a whole ticket; k_proxy's audit lines show 8-character prefixes.
    drop(socket);
    std::thread::sleep(Duration::from_millis(300));
    let proxy_logs = ch.proxy.logs();
    let server_logs = (ch.server_logs)();
    for t in &minted {
        assert!(
            !proxy_logs.contains(t.as_str()),
            "k_proxy logged a ticket:\n{proxy_logs}"
        );
        assert!(
            !server_logs.contains(t.as_str()),
            "k_server logged a ticket"
        );
        assert!(
            !proxy_logs.contains(&t[..9]),
            "more than 8 characters of a ticket in k_proxy's log"
        );
    }
    assert!(
        proxy_logs.contains(&format!("ticket=\"{}\"", &minted[0][..8])),
        "{proxy_logs}"
    );
}

#[test]
fn events_reach_only_their_own_user() {
    let ch = chain(&[]);
    let (c, port) = (&ch.c, ch.port);
    let me = origin(port);
    let alice = c.login_ok("alice");
    let bob = c.login_ok("bob");
    let mut counter = open(port, "counter", &ticket(c, &alice, Some(&me)));
    let first = next_event(&mut counter, Duration::from_secs(5)).unwrap();
    assert_eq!(first["type"], json!("counter"));
    let mut a = open(port, "secrets", &ticket(c, &alice, Some(&me)));
    let mut b = open(port, "secrets", &ticket(c, &bob, Some(&me)));

    // Each new counter value is pushed (the counter is shared).
    let n = counter_of(&c.counter_post(&bob));
    assert_eq!(
        next_event(&mut counter, Duration::from_secs(5)).unwrap(),
        json!({"type": "counter", "counter": n})
    );

    let put = |tok: &str, name: &str| {
        c.req(
            "PUT",
            &format!("/resource/secrets/{name}"),
            &[&Client::bearer(tok), "Content-Type: application/json"],
            &["--data-binary", r#"{"value":"v"}"#],
        )
        .expect(201);
    };
    put(&alice, "alice-note");
    assert_eq!(
        next_event(&mut a, Duration::from_secs(5)).unwrap(),
        json!({"type": "secret_added", "name": "alice-note"})
    );
    put(&bob, "bob-note");
    assert_eq!(
        next_event(&mut b, Duration::from_secs(5)).unwrap(),
        json!({"type": "secret_added", "name": "bob-note"})
    );
    c.req(
        "DELETE",
        "/resource/secrets/alice-note",
        &[&Client::bearer(&alice)],
        &[],
    )
    .expect(200);
    assert_eq!(
        next_event(&mut a, Duration::from_secs(5)).unwrap(),
        json!({"type": "secret_removed", "name": "alice-note"})
    );
    // Neither saw the other's.
    assert_eq!(next_event(&mut a, Duration::from_millis(500)), None);
    assert_eq!(next_event(&mut b, Duration::from_millis(500)), None);
}

fn assert_closed_within_a_second(socket: &mut Socket, since: Instant, reason: &str) {
    let (code, why, at) = wait_close(socket, Duration::from_secs(3));
    assert_eq!(code, 4401, "{why}");
    assert_eq!(why, format!("session_ended:{reason}"));
    let took = at
        .checked_duration_since(since)
        .expect("the socket closed before its session ended");
    assert!(
        took < Duration::from_secs(1),
        "closed {took:?} after the session ended"
    );
}

#[test]
fn a_socket_closes_within_a_second_of_logout_logout_all_and_supersede() {
    let ch = chain(&[]);
    let (c, port) = (&ch.c, ch.port);
    let me = origin(port);

    let tok = c.login_ok("alice");
    let mut s = open(port, "counter", &ticket(c, &tok, Some(&me)));
    let at = Instant::now();
    c.logout(&tok).expect(200);
    assert_closed_within_a_second(&mut s, at, "logged_out");

    let one = c.login_ok("alice");
    let two = c.login_ok("alice");
    let mut s1 = open(port, "counter", &ticket(c, &one, Some(&me)));
    let mut s2 = open(port, "secrets", &ticket(c, &two, Some(&me)));
    let bob = c.login_ok("bob");
    let mut sb = open(port, "counter", &ticket(c, &bob, Some(&me)));
    let at = Instant::now();
    c.req(
        "POST",
        "/session/logout",
        &[&Client::bearer(&two), "Content-Type: application/json"],
        &["--data-binary", r#"{"all":true}"#],
    )
    .expect(200);
    assert_closed_within_a_second(&mut s1, at, "logged_out");
    assert_closed_within_a_second(&mut s2, at, "logged_out");
    // Bob's socket lives on and still receives.
    assert_eq!(
        next_event(&mut sb, Duration::from_secs(5)).unwrap()["type"],
        json!("counter")
    );
    let n = counter_of(&c.counter_post(&bob));
    assert_eq!(
        next_event(&mut sb, Duration::from_secs(5)).unwrap()["counter"],
        json!(n)
    );
    drop(ch);

    let ch = chain(&["--on-new-login", "supersede"]);
    let (c, port) = (&ch.c, ch.port);
    let tok = c.login_ok("alice");
    let mut s = open(port, "counter", &ticket(c, &tok, Some(&origin(port))));
    let at = Instant::now();
    c.login_ok("alice");
    assert_closed_within_a_second(&mut s, at, "superseded");
}

#[test]
fn a_socket_closes_within_a_second_of_expiry_and_idle_timeout() {
    let ch = chain(&["--session-ttl", "2"]);
    let (c, port) = (&ch.c, ch.port);
    let login_at = Instant::now();
    let tok = c.login_ok("alice");
    let mut s = open(port, "counter", &ticket(c, &tok, Some(&origin(port))));
    // Expires 2 s after the login answered (at the latest).
    assert_closed_within_a_second(&mut s, login_at + Duration::from_secs(2), "expired");
    drop(ch);

    let ch = chain(&["--idle-timeout", "3"]);
    let (c, port) = (&ch.c, ch.port);
    // The login is the session's last use: neither the socket nor its ticket is one (a
    // page that keeps reconnecting its live updates must still idle out), so the session
    // ends 3 s after the login was answered, no sooner than 3 s after it was sent.
    let used_at = Instant::now();
    let tok = c.login_ok("alice");
    let t = ticket(c, &tok, Some(&origin(port)));
    let mut s = open(port, "counter", &t);
    // A second ticket 1.5 s in: were it a use, the socket would close 1.5 s late.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = ticket(c, &tok, Some(&origin(port)));
    assert_closed_within_a_second(&mut s, used_at + Duration::from_secs(3), "idle_timeout");
    mint(c, &tok, Some(&origin(port))).expect_error(401, "idle_timeout");
}

#[test]
fn bounds_hold_and_the_others_keep_receiving() {
    let ch = chain(&["--ws-max-per-session", "2", "--ws-max-sockets", "3"]);
    let (c, port) = (&ch.c, ch.port);
    let me = origin(port);
    let alice = c.login_ok("alice");
    let bob = c.login_ok("bob");
    let carol = c.login_ok("carol");
    let mut a1 = open(port, "counter", &ticket(c, &alice, Some(&me)));
    let mut a2 = open(port, "counter", &ticket(c, &alice, Some(&me)));
    expect_refused(
        connect(
            port,
            "counter",
            &ticket(c, &alice, Some(&me)),
            Some(&me),
            &[],
        ),
        429,
        "too_many_sockets",
    );
    let mut b1 = open(port, "counter", &ticket(c, &bob, Some(&me)));
    expect_refused(
        connect(
            port,
            "counter",
            &ticket(c, &carol, Some(&me)),
            Some(&me),
            &[],
        ),
        503,
        "socket_limit",
    );
    for s in [&mut a1, &mut a2, &mut b1] {
        next_event(s, Duration::from_secs(5)).unwrap();
    }
    // An oversized frame from a client: that socket is closed with 1009 ...
    a2.send(Message::Text("x".repeat(64 * 1024).into()))
        .unwrap();
    let (code, why, _) = wait_close(&mut a2, Duration::from_secs(5));
    assert_eq!(code, u16::from(CloseCode::Size), "{why}");
    // ... and the others keep receiving.
    let n = counter_of(&c.counter_post(&carol));
    assert_eq!(
        next_event(&mut a1, Duration::from_secs(5)).unwrap()["counter"],
        json!(n)
    );
    assert_eq!(
        next_event(&mut b1, Duration::from_secs(5)).unwrap()["counter"],
        json!(n)
    );
    // Its slot is free again.
    drop(a2);
    std::thread::sleep(Duration::from_millis(300));
    let _a3 = open(port, "counter", &ticket(c, &alice, Some(&me)));
}
