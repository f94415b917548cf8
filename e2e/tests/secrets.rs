//! k_server's second resource, per-user secrets, through the whole chain: each user sees
//! only their own, values survive a k_server crash, bad requests get JSON errors; and
//! who may reach k_server at all (`--allow-client`).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

fn start_k_server(certs: &Certs, port: u16, data_dir: &std::path::Path, extra: &[&str]) -> Proc {
    k_server_tls(certs, port)
        .args(["--data-dir", &s(data_dir)])
        .args(extra)
        .start(port)
}

/// k_proxy with plain HTTP toward the clients and `crt`/`key` toward k_server.
fn start_proxy(
    certs: &Certs,
    sport: u16,
    crt: &std::path::Path,
    key: &std::path::Path,
) -> (Proc, Client) {
    let (proxy, _port, client) = start_proxy_plain(
        &format!("https://127.0.0.1:{sport}"),
        &[
            "--server-ca-file",
            &s(certs.ca()),
            "--client-certfile",
            &s(crt),
            "--client-keyfile",
            &s(key),
            "--gate",
            "soft",
        ],
    );
    (proxy, client)
}

fn put(c: &Client, tok: &str, name: &str, value: &str) -> Resp {
    let body = json!({ "value": value }).to_string();
    c.req(
        "PUT",
        &format!("/resource/secrets/{name}"),
        &[&Client::bearer(tok), "Content-Type: application/json"],
        &["--data-binary", &body],
    )
}

fn get(c: &Client, tok: &str, name: &str) -> Resp {
    c.req(
        "GET",
        &format!("/resource/secrets/{name}"),
        &[&Client::bearer(tok)],
        &[],
    )
}

fn delete(c: &Client, tok: &str, name: &str) -> Resp {
    c.req(
        "DELETE",
        &format!("/resource/secrets/{name}"),
        &[&Client::bearer(tok)],
        &[],
    )
}

fn list(c: &Client, tok: &str) -> Resp {
    c.req("GET", "/resource/secrets", &[&Client::bearer(tok)], &[])
}

/// Asserts a 200 answer `{"user", "name", "value"}` for `user`.
fn expect_value(r: &Resp, user: &str, name: &str, value: &str) {
    let v = r.expect(200);
    assert_eq!(
        v,
        json!({"user": user, "name": name, "value": value}),
        "{}",
        r.ctx()
    );
}

fn expect_names(r: &Resp, user: &str, names: &[&str]) {
    let v = r.expect(200);
    assert_eq!(v, json!({"user": user, "names": names}), "{}", r.ctx());
}

#[test]
fn users_cannot_read_list_or_delete_each_others_secrets_and_values_survive_a_crash() {
    let certs = Certs::generate();
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("store");
    let sport = free_port();
    let mut server = start_k_server(&certs, sport, &data_dir, &[]);
    let (mut proxy, c) = start_proxy(&certs, sport, &certs.proxy_crt(), &certs.proxy_key());
    let alice = c.login_ok("alice");
    let bob = c.login_ok("bob");

    let r = put(&c, &alice, "db", "alice's db password");
    assert_eq!(
        r.expect(201),
        json!({"user": "alice", "name": "db", "created": true, "bytes": 19}),
        "{}",
        r.ctx()
    );
    put(&c, &alice, "api.key", "alice-api-key").expect(201);
    // Bob's secret of the same name is a different secret.
    put(&c, &bob, "db", "bob's db password").expect(201);

    // Bob cannot read, list or delete Alice's.
    get(&c, &bob, "api.key").expect_json_error(404, &["secret_not_found"]);
    expect_value(&get(&c, &bob, "db"), "bob", "db", "bob's db password");
    expect_names(&list(&c, &bob), "bob", &["db"]);
    delete(&c, &bob, "api.key").expect_json_error(404, &["secret_not_found"]);
    // Claiming to be Alice in k_proxy's own identity header changes nothing.
    let r = c.req(
        "GET",
        "/resource/secrets/api.key",
        &[&Client::bearer(&bob), "X-Chromecard-User: alice"],
        &[],
    );
    r.expect_json_error(404, &["secret_not_found"]);
    // Deleting his own leaves Alice's alone.
    let r = delete(&c, &bob, "db");
    assert_eq!(
        r.expect(200),
        json!({"user": "bob", "name": "db", "deleted": true}),
        "{}",
        r.ctx()
    );
    expect_names(&list(&c, &bob), "bob", &[]);
    expect_names(&list(&c, &alice), "alice", &["api.key", "db"]);

    // Replace is 200 with created=false.
    let r = put(&c, &alice, "db", "rotated");
    assert_eq!(r.expect(200)["created"], json!(false), "{}", r.ctx());

    // SIGKILL and restart on the same data directory: every acknowledged write is there.
    server.kill();
    let _server = start_k_server(&certs, sport, &data_dir, &[]);
    // k_proxy's pooled connection died with k_server; the sessions did not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = get(&c, &alice, "db");
        if r.status != 502 || Instant::now() > deadline {
            break r;
        }
        thread::sleep(Duration::from_millis(100));
    };
    expect_value(&r, "alice", "db", "rotated");
    expect_value(
        &get(&c, &alice, "api.key"),
        "alice",
        "api.key",
        "alice-api-key",
    );
    expect_names(&list(&c, &alice), "alice", &["api.key", "db"]);
    get(&c, &bob, "db").expect_json_error(404, &["secret_not_found"]);
    proxy.assert_running();
}

#[test]
fn secret_requests_are_checked() {
    let certs = Certs::generate();
    let data = tempfile::tempdir().expect("tempdir");
    let sport = free_port();
    let _server = start_k_server(&certs, sport, &data.path().join("store"), &[]);
    let (_proxy, c) = start_proxy(&certs, sport, &certs.proxy_crt(), &certs.proxy_key());
    let tok = c.login_ok("alice");
    let auth = Client::bearer(&tok);

    for bad in ["a~b", "a*b", &"n".repeat(129)] {
        put(&c, &tok, bad, "v").expect_json_error(400, &["invalid_name"]);
        get(&c, &tok, bad).expect_json_error(400, &["invalid_name"]);
    }
    get(&c, &tok, "missing").expect_json_error(404, &["secret_not_found"]);
    let r = c.req("POST", "/resource/secrets/x", &[&auth], &[]);
    r.expect_json_error(405, &["method_not_allowed"]);
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"), "{}", r.ctx());
    let r = c.req("DELETE", "/resource/secrets", &[&auth], &[]);
    r.expect_json_error(405, &["method_not_allowed"]);
    c.req(
        "PUT",
        "/resource/secrets/x",
        &[&auth],
        &["--data-binary", r#"{"value":"v"}"#],
    )
    .expect_json_error(415, &["unsupported_media_type"]);
    let json_put = |body: &str| {
        c.req(
            "PUT",
            "/resource/secrets/x",
            &[&auth, "Content-Type: application/json"],
            &["--data-binary", body],
        )
    };
    json_put("not json").expect_json_error(400, &["invalid_json"]);
    json_put(r#"{"value":42}"#).expect_json_error(400, &["invalid_body"]);
    json_put(r#"{"value":"v","other":1}"#).expect_json_error(400, &["invalid_body"]);

    // A value of exactly 64 KiB is stored directly at k_server (k_proxy's default
    // --max-body-bytes counts the JSON around it too); one byte more is refused.
    let k = server_client_as_proxy(sport, &certs);
    let hop = proxy_headers("alice");
    let dir = tempfile::tempdir().expect("tempdir");
    for (len, status) in [(65536usize, 201u16), (65537, 413)] {
        let file = dir.path().join(format!("body-{len}"));
        std::fs::write(&file, json!({"value": "x".repeat(len)}).to_string()).expect("write");
        let r = k.req(
            "PUT",
            "/resource/secrets/big",
            &[&hop[0], &hop[1], "Content-Type: application/json"],
            &["--data-binary", &format!("@{}", s(&file))],
        );
        if status == 201 {
            assert_eq!(r.expect(201)["bytes"], json!(len), "{}", r.ctx());
        } else {
            r.expect_json_error(413, &["value_too_large"]);
        }
    }
    // Through k_proxy, the big value is readable by its owner.
    let r = get(&c, &tok, "big");
    assert_eq!(
        r.expect(200)["value"].as_str().map(str::len),
        Some(65536),
        "{}",
        r.ctx()
    );
}

/// Makes a client certificate named `name` (CN and DNS SAN) signed by `certs`' CA.
fn client_cert(certs: &Certs, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    require_tool("openssl", "version");
    let key = certs.path(&format!("{name}.key"));
    let csr = certs.path(&format!("{name}.csr"));
    let ext = certs.path(&format!("{name}.ext"));
    let crt = certs.path(&format!("{name}.crt"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\nsubjectAltName=DNS:{name}\n"
        ),
    )
    .expect("ext file");
    for args in [
        vec![
            "genpkey".to_string(),
            "-algorithm".into(),
            "EC".into(),
            "-pkeyopt".into(),
            "ec_paramgen_curve:P-256".into(),
            "-out".into(),
            s(&key),
        ],
        vec![
            "req".into(),
            "-new".into(),
            "-key".into(),
            s(&key),
            "-subj".into(),
            format!("/CN={name}"),
            "-out".into(),
            s(&csr),
        ],
        vec![
            "x509".into(),
            "-req".into(),
            "-in".into(),
            s(&csr),
            "-CA".into(),
            s(certs.ca()),
            "-CAkey".into(),
            s(certs.path("ca.key")),
            "-set_serial".into(),
            "0x5eed".into(),
            "-days".into(),
            "2".into(),
            "-extfile".into(),
            s(&ext),
            "-out".into(),
            s(&crt),
        ],
    ] {
        let ran = run(
            Command::new("openssl").args(&args),
            None,
            Duration::from_secs(30),
        );
        assert!(
            ran.success(),
            "openssl {args:?}: {}\n{}",
            ran.describe_status(),
            ran.stderr
        );
    }
    (crt, key)
}

#[test]
fn allow_client_serves_listed_certificates_only() {
    let certs = Certs::generate();
    let (other_crt, other_key) = client_cert(&certs, "k_proxy_b");
    let data = tempfile::tempdir().expect("tempdir");
    let sport = free_port();
    let mut server = start_k_server(
        &certs,
        sport,
        &data.path().join("store"),
        &["--allow-client", "k_proxy", "--allow-client", "k_proxy_c"],
    );
    let hop = proxy_headers("alice");
    let hop: Vec<&str> = hop.iter().map(String::as_str).collect();

    // Listed (CN k_proxy): served.
    let listed = server_client_as_proxy(sport, &certs);
    listed.healthz().expect(200);
    assert_eq!(
        counter_of(&listed.req("POST", "/resource/counter", &hop, &[])),
        1
    );

    // Same CA, not listed: 403, on every path, and a log line that says why.
    let other = Client::tls(sport, &certs.ca()).with_client_cert(&other_crt, &other_key);
    other
        .healthz()
        .expect_json_error(403, &["client_not_allowed"]);
    other
        .req("POST", "/resource/counter", &hop, &[])
        .expect_json_error(403, &["client_not_allowed"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains("not on --allow-client") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let log = server.stderr();
    assert!(
        log.contains("not on --allow-client") && log.contains("k_proxy_b"),
        "k_server must log the refusal and the certificate's names:\n{log}"
    );

    // Through the chain: the listed k_proxy works, the other one's clients get 403.
    let (_p1, c1) = start_proxy(&certs, sport, &certs.proxy_crt(), &certs.proxy_key());
    let tok = c1.login_ok("alice");
    assert_eq!(counter_of(&c1.counter_post(&tok)), 2);
    let (_p2, c2) = start_proxy(&certs, sport, &other_crt, &other_key);
    let tok = c2.login_ok("alice");
    c2.counter_post(&tok)
        .expect_json_error(403, &["client_not_allowed"]);
    assert_eq!(counter_of(&c1.counter_get(&c1.login_ok("alice"))), 2);
    server.assert_running();

    // Without TLS there is no certificate to check: refused at start-up.
    Spawn::k_server()
        .args([
            "--port",
            &free_port().to_string(),
            "--proxy-token",
            PROXY_TOKEN,
            "--allow-client",
            "k_proxy",
        ])
        .run_to_exit(Duration::from_secs(15))
        .assert_refused(&["--tls-certfile"]);
}
