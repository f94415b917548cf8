//! Start-up: bad configurations are refused (non-zero exit, the flag named on stderr),
//! and the defaults bind IPv4 loopback.

use std::fs;
use std::process::Command;
use std::time::Duration;

use chromecard_e2e::*;

const LIMIT: Duration = Duration::from_secs(5);

fn port_s() -> String {
    free_port().to_string()
}

/// k_server on a free port with the runbook's proxy token, plus `extra` flags.
fn k_server_with(extra: &[&str]) -> Spawn {
    Spawn::k_server()
        .args(["--port", &port_s(), "--proxy-token", PROXY_TOKEN])
        .args(extra)
}

/// k_proxy on a free port with the runbook's proxy token and `--gate soft`, plus `extra`.
fn k_proxy_with(extra: &[&str]) -> Spawn {
    Spawn::k_proxy()
        .args([
            "--port",
            &port_s(),
            "--proxy-token",
            PROXY_TOKEN,
            "--gate",
            "soft",
        ])
        .args(extra)
}

#[test]
fn k_server_refuses_certfile_without_keyfile() {
    let certs = Certs::generate();
    k_server_with(&["--tls-certfile", &s(certs.server_crt())])
        .run_to_exit(LIMIT)
        .assert_refused(&["--tls-keyfile"]);
    k_server_with(&["--tls-keyfile", &s(certs.server_key())])
        .run_to_exit(LIMIT)
        .assert_refused(&["--tls-certfile"]);
}

/// Plain HTTP leaves the proxy token as the only check, in clear: loopback only.
#[test]
fn k_server_refuses_plain_http_beyond_loopback() {
    k_server_with(&["--host", "0.0.0.0"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--host 0.0.0.0", "--tls-certfile"]);
}

/// An expired certificate stops start-up, naming the flag, instead of failing every
/// handshake later (k_proxy already did this; k_server only logged nothing).
#[test]
fn k_server_refuses_an_expired_certificate() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    // openssl req -x509 cannot back-date; `openssl ca` can.
    let script = r#"set -e
        printf '[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\ndefault_md = sha256\npolicy = p\nserial = serial\n[p]\ncommonName = supplied\n' > ca.cnf
        : > index.txt; echo 01 > serial
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=old-ca -days 2
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=k_server
        openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in leaf.csr -out leaf.crt -startdate 20200101000000Z -enddate 20200102000000Z"#;
    let made = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir.path())
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "{made:?}");
    let crt = dir.path().join("leaf.crt");
    let key = dir.path().join("leaf.key");
    k_server_with(&[
        "--tls-certfile",
        &s(&crt),
        "--tls-keyfile",
        &s(&key),
        "--client-ca-file",
        &s(certs.ca()),
    ])
    .run_to_exit(LIMIT)
    .assert_refused(&["--tls-certfile", "expired"]);
}

#[test]
fn k_server_refuses_tls_without_client_ca() {
    let certs = Certs::generate();
    let lonely = tempfile::tempdir().expect("tempdir");
    let crt = lonely.path().join("k_server.crt");
    let key = lonely.path().join("k_server.key");
    fs::copy(certs.server_crt(), &crt).expect("copy");
    fs::copy(certs.server_key(), &key).expect("copy");
    k_server_with(&["--tls-certfile", &s(&crt), "--tls-keyfile", &s(&key)])
        .run_to_exit(LIMIT)
        .assert_refused(&["--client-ca-file"]);
    // With --client-ca-file it starts (positive control).
    let port = free_port();
    let mut p = Spawn::k_server()
        .args([
            "--port",
            &port.to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--tls-certfile",
            &s(&crt),
            "--tls-keyfile",
            &s(&key),
            "--client-ca-file",
            &s(certs.ca()),
        ])
        .start(port);
    server_client_as_proxy(port, &certs).healthz().expect(200);
    p.assert_running();
}

#[test]
fn k_server_refuses_without_proxy_token() {
    let e = Spawn::k_server()
        .args(["--port", &port_s()])
        .run_to_exit(LIMIT);
    e.assert_refused(&["--proxy-token", "--proxy-token-file"]);
    assert_eq!(
        e.status.and_then(|s| s.code()),
        Some(2),
        "no proxy token source must exit 2\n{}",
        e.stderr
    );
    // An empty token is no token.
    Spawn::k_server()
        .args(["--port", &port_s()])
        .env("CHROMECARD_PROXY_TOKEN", "")
        .run_to_exit(LIMIT)
        .assert_refused(&["CHROMECARD_PROXY_TOKEN"]);
}

#[test]
fn k_server_refuses_two_proxy_token_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("token");
    fs::write(&f, "file-token\n").expect("write");
    k_server_with(&["--proxy-token-file", &s(&f)])
        .run_to_exit(LIMIT)
        .assert_refused(&["--proxy-token"]);
}

#[test]
fn k_server_reads_proxy_token_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("token");
    fs::write(&f, "file-token\n").expect("write");
    let port = free_port();
    let _p = Spawn::k_server()
        .args(["--port", &port.to_string(), "--proxy-token-file", &s(&f)])
        .start(port);
    let k = Client::plain(port);
    let r = k.req(
        "POST",
        "/resource/counter",
        &["X-Proxy-Token: file-token", "X-Chromecard-User: alice"],
        &[],
    );
    assert_eq!(
        counter_of(&r),
        1,
        "token from --proxy-token-file (trailing newline trimmed){}",
        r.ctx()
    );
}

#[test]
fn k_proxy_refuses_bad_configurations() {
    let certs = Certs::generate();
    let (crt, key) = (s(certs.proxy_crt()), s(certs.proxy_key()));
    // Everything else right (client certificate given): only the CA is missing.
    k_proxy_with(&[
        "--server-base-url",
        "https://127.0.0.1:9780",
        "--tls-certfile",
        &crt,
        "--tls-keyfile",
        &key,
    ])
    .run_to_exit(LIMIT)
    .assert_refused(&["--server-ca-file"]);
    k_proxy_with(&["--session-ttl", "0"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--session-ttl"]);
    k_proxy_with(&["--session-ttl=-5"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--session-ttl"]);
    k_proxy_with(&["--connection-threads", "5000"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--connection-threads", "0..=1024"]);
    k_proxy_with(&["--bogus-flag"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--bogus-flag"]);
    k_proxy_with(&["--gate", "bogus"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--gate"]);
    k_proxy_with(&["--tls-certfile", &s(certs.proxy_crt())])
        .run_to_exit(LIMIT)
        .assert_refused(&["--tls-keyfile"]);
    let e = Spawn::k_proxy()
        .args(["--port", &port_s(), "--gate", "soft"])
        .run_to_exit(LIMIT);
    e.assert_refused(&["--proxy-token", "--proxy-token-file"]);
    assert_eq!(
        e.status.and_then(|s| s.code()),
        Some(2),
        "no proxy token source must exit 2\n{}",
        e.stderr
    );
}

#[test]
fn k_proxy_names_unreadable_server_ca_file() {
    let certs = Certs::generate();
    k_proxy_with(&[
        "--server-ca-file",
        "/nonexistent/ca.crt",
        "--server-base-url",
        "https://127.0.0.1:9780",
        "--tls-certfile",
        &s(certs.proxy_crt()),
        "--tls-keyfile",
        &s(certs.proxy_key()),
    ])
    .run_to_exit(LIMIT)
    .assert_refused(&["--server-ca-file", "/nonexistent/ca.crt"]);
}

#[test]
fn k_server_names_unreadable_tls_files() {
    let certs = Certs::generate();
    k_server_with(&[
        "--tls-certfile",
        "/nonexistent/k_server.crt",
        "--tls-keyfile",
        &s(certs.server_key()),
        "--client-ca-file",
        &s(certs.ca()),
    ])
    .run_to_exit(LIMIT)
    .assert_refused(&["--tls-certfile", "/nonexistent/k_server.crt"]);
}

#[test]
fn k_server_refuses_unknown_flag() {
    k_server_with(&["--bogus-flag"])
        .run_to_exit(LIMIT)
        .assert_refused(&["--bogus-flag"]);
}

/// Listening sockets on `port` as shown by `ss -ltnH`.
fn listeners(port: u16) -> Vec<String> {
    let ran = run(
        Command::new("ss").args(["-ltnH"]),
        None,
        Duration::from_secs(10),
    );
    assert!(
        ran.success(),
        "ss -ltnH failed: {}\n{}",
        ran.describe_status(),
        ran.stderr
    );
    let suffix = format!(":{port}");
    ran.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .filter(|local| local.ends_with(&suffix))
        .collect()
}

#[test]
fn defaults_bind_ipv4_loopback_only() {
    require_tool("ss", "-V");
    let sport = free_port();
    let mut server = Spawn::k_server()
        .args(["--port", &sport.to_string(), "--proxy-token", PROXY_TOKEN])
        .start(sport);
    let pport = free_port();
    let mut proxy = Spawn::k_proxy()
        .args([
            "--port",
            &pport.to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--server-base-url",
            &format!("http://127.0.0.1:{sport}"),
            "--gate",
            "soft",
        ])
        .start(pport);
    for (name, port) in [("k_server", sport), ("k_proxy", pport)] {
        let l = listeners(port);
        assert_eq!(
            l,
            vec![format!("127.0.0.1:{port}")],
            "{name} with the default --host must listen on 127.0.0.1:{port} only (not 0.0.0.0, not ::)"
        );
    }
    Client::plain(pport).healthz().expect(200);
    Client::plain(sport).healthz().expect(200);
    assert_eq!(login_and_count(&Client::plain(pport)), 1);
    server.assert_running();
    proxy.assert_running();
}

/// The shipped Qubes unit's k_proxy command line, run as systemd would run it (the `%d`
/// credentials directory and the enrolment file that ExecStartPre creates, both in temp
/// dirs; only the port is changed, to a free one): k_proxy must come up at the assertion
/// level with the real key as its gate, and refuse a login nobody enrolled.
#[test]
fn the_shipped_k_proxy_unit_runs_at_the_assertion_level() {
    let unit = fs::read_to_string(workspace_file("qubes/systemd/k_proxy.service")).unwrap();
    let exec = unit
        .split("\nExecStart=")
        .nth(1)
        .expect("k_proxy.service has an ExecStart= line");
    let mut line = String::new();
    for part in exec.lines() {
        match part.trim_end().strip_suffix('\\') {
            Some(continued) => {
                line.push_str(continued);
                line.push(' ');
            }
            None => {
                line.push_str(part.trim_end());
                break;
            }
        }
    }
    let certs = Certs::generate();
    fs::write(certs.path("proxy-token"), "a-token-for-the-unit-test").unwrap();
    let state = TempDir::new().unwrap();
    let creds = state.path().join("credentials");
    fs::write(&creds, "").unwrap();
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            w.replace("%d", &s(certs.dir()))
                .replace("/rw/chromecard/k_proxy/credentials", &s(&creds))
        })
        .collect();
    assert_eq!(words[0], "/usr/local/bin/k_proxy", "{line}");
    assert!(words.iter().any(|w| w == "--credentials-file"), "{line}");
    assert!(
        !words.iter().any(|w| w == "--gate" || w == "--gate-level"),
        "the shipped unit must use the real key at the level the enrolment file gives: {line}"
    );
    let mut args = words[1..].to_vec();
    let port = free_port();
    let at = args.iter().position(|a| a == "--port").expect("--port") + 1;
    args[at] = port.to_string();
    let proxy = Spawn::k_proxy().args(&args).start(port);
    let c = Client::tls(port, &certs.ca());
    // The real key is asked for the touch an unenrolled name is answered after; this
    // machine has none.
    c.login("alice").expect_json_error(401, &["no_key"]);
    let logs = proxy.stderr();
    assert!(logs.contains("GATE LEVEL: ASSERTION"), "{logs}");
    assert!(logs.contains("nobody is enrolled yet"), "{logs}");
}
