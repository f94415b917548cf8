//! The prototype runbook's commands, verbatim (binary instead of `python3 .../k_*_app.py`,
//! `--gate soft` added, cert paths into a generated dir), on the runbook's FIXED ports.
//! All fixed-port tests live in this file and hold `fixed_ports_lock()`.

use std::process::Command;
use std::time::Duration;

use chromecard_e2e::*;

fn run_runbook_script(args: &[&str]) {
    let script = workspace_file("scripts/runbook.sh");
    // A locale that is not UTF-8: the output must still be what it says.
    let ran = run(
        Command::new(&script)
            .args(args)
            .env("LC_ALL", "C")
            .env("LANG", "C"),
        None,
        Duration::from_secs(120),
    );
    assert!(
        ran.success(),
        "{} {} failed: {}\nstdout:\n{}\nstderr:\n{}",
        script.display(),
        args.join(" "),
        ran.describe_status(),
        ran.stdout,
        ran.stderr
    );
    assert!(
        ran.stdout.contains("runbook: all 5 steps passed"),
        "runbook.sh exited 0 but did not print `runbook: all 5 steps passed`\nstdout:\n{}\nstderr:\n{}",
        ran.stdout,
        ran.stderr
    );
    assert!(
        !ran.stdout.contains("\\u") && ran.stdout.contains("..."),
        "runbook.sh printed an escape instead of the masked token under LC_ALL=C:\n{}",
        ran.stdout
    );
}

#[test]
fn runbook_same_vm_verbatim() {
    let _guard = fixed_ports_lock();
    require_ports_free(&[8780, 8770]);

    let mut server = Spawn::k_server()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "8780",
            "--proxy-token",
            "dev-proxy-token",
        ])
        .start(8780);
    let mut proxy = Spawn::k_proxy()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "8770",
            "--session-ttl",
            "300",
            "--server-base-url",
            "http://127.0.0.1:8780",
            "--proxy-token",
            "dev-proxy-token",
            "--gate",
            "soft",
        ])
        .start(8770);

    let c = Client::plain(8770);
    c.healthz().expect(200);
    run_runbook_script(&["--port", "8770"]);
    // The same flow, checked by the harness itself.
    runbook_flow(&c);
    server.assert_running();
    proxy.assert_running();
}

#[test]
fn runbook_split_vm_verbatim() {
    let _guard = fixed_ports_lock();
    require_tool("socat", "-V");
    require_ports_free(&[8780, 9780, 8771]);

    let certs = Certs::generate();
    let mut server = Spawn::k_server()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "8780",
            "--proxy-token",
            "dev-proxy-token",
            "--tls-certfile",
            &s(certs.server_crt()),
            "--tls-keyfile",
            &s(certs.server_key()),
        ])
        .start(8780);
    // Stands in for `qvm-connect-tcp 9780:k_server:8780`.
    let mut forward = Spawn::program("socat", "socat")
        .args([
            "TCP-LISTEN:9780,bind=127.0.0.1,reuseaddr,fork",
            "TCP:127.0.0.1:8780",
        ])
        .start(9780);
    let mut proxy = Spawn::k_proxy()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "8771",
            "--session-ttl",
            "300",
            "--server-base-url",
            "https://127.0.0.1:9780",
            "--server-ca-file",
            &s(certs.ca()),
            "--proxy-token",
            "dev-proxy-token",
            "--tls-certfile",
            &s(certs.proxy_crt()),
            "--tls-keyfile",
            &s(certs.proxy_key()),
            "--gate",
            "soft",
        ])
        .start(8771);

    let c = Client::tls(8771, &certs.ca());
    c.healthz().expect(200);
    // k_proxy must serve TLS on 8771: plain HTTP there must not be served.
    let plain = Client::plain(8771).healthz();
    assert_ne!(
        plain.status,
        200,
        "k_proxy with --tls-certfile must not serve plain HTTP{}",
        plain.ctx()
    );
    run_runbook_script(&["--port", "8771", "--cacert", &s(certs.ca())]);
    runbook_flow(&c);
    server.assert_running();
    forward.assert_running();
    proxy.assert_running();
}
