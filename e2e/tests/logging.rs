//! The log lines through the buffered writer (crates/http/src/log_writer.rs): every access
//! and audit line reaches stderr, promptly while the process runs (no shutdown needed to
//! see them), and the last of them before the process exits on SIGTERM.

use std::time::Duration;

use chromecard_e2e::*;

fn access_lines(log: &str, path: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" INFO request ") && l.contains(&format!(" path={path} ")))
        .count()
}

#[test]
fn access_and_audit_lines_arrive_promptly_and_all_by_exit() {
    let (mut server, sport) = start_server_plain();
    let (mut proxy, _port, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    // Promptly: each line shows up while the process keeps running.
    assert!(
        wait_until(Duration::from_secs(2), || proxy
            .stderr()
            .contains("event=\"login\"")
            || proxy.stderr().contains("event=login")),
        "the login's audit line was not written within 2 s\n{}",
        proxy.logs()
    );
    const REQUESTS: usize = 40;
    for i in 1..=REQUESTS {
        c.counter_get(&tok).expect(200);
        if i % 10 == 0 {
            assert!(
                wait_until(Duration::from_secs(2), || access_lines(
                    &proxy.stderr(),
                    "/resource/counter"
                ) >= i
                    && access_lines(&server.stderr(), "/resource/counter") >= i),
                "access lines for {i} requests were not all written within 2 s\n{}\n{}",
                proxy.logs(),
                server.logs()
            );
        }
    }
    c.logout(&tok).expect(200);
    // All of them, and the last line, by the time each process has exited on SIGTERM.
    for (p, last) in [
        (&mut proxy, "k_proxy stopped"),
        (&mut server, "k_server stopped"),
    ] {
        p.signal("TERM");
        let status = p
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM\n{}", p.logs()));
        assert!(status.success(), "{status}\n{}", p.logs());
        let log = p.stderr();
        assert_eq!(
            access_lines(&log, "/resource/counter"),
            REQUESTS,
            "{}",
            p.logs()
        );
        assert!(
            log.lines().last().is_some_and(|l| l.ends_with(last)),
            "the last line is not {last:?}\n{}",
            p.logs()
        );
        assert!(
            log.lines()
                .all(|l| l.len() >= 28 && l.as_bytes()[27] == b' '),
            "a line does not start with its time (torn or interleaved?)\n{}",
            p.logs()
        );
    }
    let log = proxy.stderr();
    assert_eq!(access_lines(&log, "/session/logout"), 1, "{}", proxy.logs());
    assert!(
        log.contains("event=\"logout\"") || log.contains("event=logout"),
        "{}",
        proxy.logs()
    );
}
