//! The Qubes split-VM chain, simulated (`scripts/splitvm-sim.sh`): three qubes as network
//! namespaces with nothing but loopback, qrexec stand-ins that evaluate the SHIPPED dom0
//! policy (`qubes/policy.d/30-chromecard.policy`) the way dom0 does, the runbook's
//! `qvm-connect-tcp` lines and the shipped socket units as forwarders, k_server and k_proxy
//! started with the runbook's split-VM commands.
//!
//! Network namespaces need root. Where they cannot be made, the namespace tests print why
//! and return (they do not fail), except under `CI=true`, where they fail. The policy-table and unit-verification tests need no root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use chromecard_e2e::*;

/// The simulations are CPU-heavy (two servers, TLS, many short processes): one at a time.
static SIM_LOCK: Mutex<()> = Mutex::new(());

const SIM_TIMEOUT: Duration = Duration::from_secs(120);

fn sim_script() -> PathBuf {
    workspace_file("scripts/splitvm-sim.sh")
}

fn sim_cmd() -> Command {
    // The binaries the simulation starts are the harness's (built by `cargo build --bins`).
    bin_path("k_server");
    bin_path("k_proxy");
    let mut c = Command::new(sim_script());
    c.env("CHROMECARD_BIN_DIR", bin_dir());
    c
}

fn show(ran: &Ran) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        ran.describe_status(),
        ran.stdout,
        ran.stderr
    )
}

/// `None` (and a line on stderr saying why) where network namespaces cannot be made;
/// under `CI=true` a panic instead.
fn namespaces_or_skip(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let ran = run(
        Command::new(sim_script()).arg("probe"),
        None,
        Duration::from_secs(30),
    );
    if ran.success() {
        return Some(SIM_LOCK.lock().unwrap_or_else(|e| e.into_inner()));
    }
    match ran.status.and_then(|s| s.code()) {
        Some(77) => {
            skip_or_fail(
                test,
                &format!(
                    "the split-VM simulation needs network namespaces. {}",
                    ran.stderr.trim()
                ),
            );
            None
        }
        _ => panic!("splitvm-sim.sh probe failed unexpectedly: {}", show(&ran)),
    }
}

/// A running simulation (`splitvm-sim.sh up`); `down` on drop.
struct Sim {
    state: TempDir,
}

impl Sim {
    fn up(extra: &[&str]) -> Sim {
        let state = tempfile::Builder::new()
            .prefix("chromecard-splitvm-")
            .tempdir()
            .expect("tempdir");
        let sim = Sim { state };
        let ran = run(
            sim_cmd()
                .args(["up", "--state"])
                .arg(sim.state.path())
                .args(extra),
            None,
            SIM_TIMEOUT,
        );
        assert!(
            ran.success(),
            "splitvm-sim.sh up {} failed: {}{}",
            extra.join(" "),
            show(&ran),
            sim.logs()
        );
        sim
    }

    fn state(&self) -> &Path {
        self.state.path()
    }

    /// Runs `cmd` inside `qube` (stdin closed).
    fn exec(&self, qube: &str, cmd: &[&str]) -> Ran {
        run(
            sim_cmd()
                .args(["exec", qube, "--state"])
                .arg(self.state())
                .arg("--")
                .args(cmd),
            None,
            SIM_TIMEOUT,
        )
    }

    /// Any other subcommand (`policy`, `forwards`, `bg`, `stop`); asserts success.
    fn ctl(&self, sub: &[&str], rest: &[&str]) {
        let ran = run(
            sim_cmd()
                .args(sub)
                .arg("--state")
                .arg(self.state())
                .args(rest),
            None,
            SIM_TIMEOUT,
        );
        assert!(
            ran.success(),
            "splitvm-sim.sh {} failed: {}",
            sub.join(" "),
            show(&ran)
        );
    }

    fn dom0_journal(&self) -> String {
        fs::read_to_string(self.state().join("dom0/journal.log")).unwrap_or_default()
    }

    fn dom0_last(&self) -> String {
        self.dom0_journal().lines().last().unwrap_or("").to_string()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = fs::read_dir(self.state().join("logs")) {
            for e in rd.flatten() {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                out.push_str(&format!(
                    "\n--- {} ---\n{}",
                    e.file_name().to_string_lossy(),
                    text
                ));
            }
        }
        out
    }

    /// `qrexec-client-vm TARGET SERVICE` from `qube`: asserts the refusal the way a qube sees
    /// it (exit 126, "Request refused") and dom0's journal line; returns that line.
    fn assert_refused(&self, qube: &str, target: &str, service: &str, by: &str) -> String {
        let ran = self.exec(qube, &["qrexec-client-vm", target, service]);
        let dom0 = self.dom0_last();
        let shown_target = if target.is_empty() {
            "@default"
        } else {
            target
        };
        let want = format!("qrexec: {service}: {qube} -> {shown_target}: denied: ");
        assert_eq!(
            ran.status.and_then(|s| s.code()),
            Some(126),
            "{qube}: qrexec-client-vm {target:?} {service} must be refused with exit 126: {}\ndom0: {dom0}",
            show(&ran)
        );
        assert!(
            ran.stderr.contains("Request refused"),
            "the refused caller must see \"Request refused\": {}",
            show(&ran)
        );
        assert!(
            dom0.starts_with(&want) && dom0.contains(by),
            "dom0 journal: expected `{want}...{by}...`, got `{dom0}`"
        );
        dom0
    }

    fn assert_allowed(&self, qube: &str, target: &str, service: &str, dest: &str) {
        let ran = self.exec(qube, &["qrexec-client-vm", target, service]);
        let dom0 = self.dom0_last();
        let shown_target = if target.is_empty() {
            "@default"
        } else {
            target
        };
        assert!(
            ran.success(),
            "{qube}: qrexec-client-vm {target:?} {service} must be allowed: {}\ndom0: {dom0}",
            show(&ran)
        );
        assert_eq!(
            dom0,
            format!("qrexec: {service}: {qube} -> {shown_target}: allowed to {dest}")
        );
    }

    /// scripts/runbook.sh in k_client through 9771 (the first forwarder).
    fn runbook_from_k_client(&self) -> Ran {
        let script = workspace_file("scripts/runbook.sh");
        self.exec(
            "k_client",
            &[
                &s(script),
                "--port",
                "9771",
                "--cacert",
                "tls/phase2/ca.crt",
            ],
        )
    }

    fn assert_runbook_passes(&self, what: &str) {
        let ran = self.runbook_from_k_client();
        assert!(
            ran.success() && ran.stdout.contains("runbook: all 5 steps passed"),
            "{what}: the runbook must pass from k_client through 9771: {}{}",
            show(&ran),
            self.logs()
        );
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let ran = run(
            sim_cmd().args(["down", "--state"]).arg(self.state()),
            None,
            SIM_TIMEOUT,
        );
        if !ran.success() {
            eprintln!("splitvm-sim.sh down failed: {}", show(&ran));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The whole simulation
// ---------------------------------------------------------------------------------------

/// What it must show, 1: the full runbook from k_client through both forwards, once with
/// the runbook's `qvm-connect-tcp` lines and once with the shipped socket units; then the
/// simulation's own refusal checks and the prototype's policy.
#[test]
fn splitvm_simulation_runbook_through_both_forwards() {
    let Some(_guard) = namespaces_or_skip("splitvm_simulation_runbook_through_both_forwards")
    else {
        return;
    };
    let state = tempfile::Builder::new()
        .prefix("chromecard-splitvm-run-")
        .tempdir()
        .expect("tempdir");
    let ran = run(
        sim_cmd().args(["run", "--state"]).arg(state.path()),
        None,
        SIM_TIMEOUT,
    );
    eprintln!("{}", ran.stdout);
    assert!(ran.success(), "splitvm-sim.sh run failed: {}", show(&ran));
    for line in [
        "ok    isolation: every qube has only lo",
        "ok    bind: k_server on 127.0.0.1:8780, k_proxy on 127.0.0.1:8771 (nothing else)",
        "ok    pass 1: the runbook passed from k_client through both qvm-connect-tcp forwards",
        "ok    pass 2: the runbook passed from k_client through both socket-unit forwards",
        "ok    shipped policy: the runbook passes again",
        "== splitvm-sim: all checks passed",
    ] {
        assert!(
            ran.stdout.contains(line),
            "missing `{line}` in the simulation's output: {}",
            show(&ran)
        );
    }
    assert_eq!(
        ran.stdout.matches("runbook: all 5 steps passed").count(),
        3,
        "the runbook must have passed three times (qvm-connect-tcp, socket units, shipped policy again): {}",
        show(&ran)
    );
    assert!(!ran.stdout.contains("FAIL  "), "{}", show(&ran));
}

// ---------------------------------------------------------------------------------------
// What it must refuse
// ---------------------------------------------------------------------------------------

/// k_client straight to k_server:8780 is refused by the policy, whichever way it is asked
/// (named target, @default, a qvm-connect-tcp forwarder), while the hops the chain needs work.
#[test]
fn refused_k_client_straight_to_k_server() {
    let Some(_guard) = namespaces_or_skip("refused_k_client_straight_to_k_server") else {
        return;
    };
    let sim = Sim::up(&[]);
    // Positive controls: the two hops of the chain are allowed (the runbook through them is
    // splitvm_simulation_runbook_through_both_forwards).
    sim.assert_allowed("k_proxy", "k_server", "qubes.ConnectTCP+8780", "k_server");
    sim.assert_allowed("k_client", "k_proxy", "qubes.ConnectTCP+8771", "k_proxy");

    let line = sim.assert_refused(
        "k_client",
        "k_server",
        "qubes.ConnectTCP+8780",
        "denied by policy ",
    );
    assert!(
        line.contains("30-chromecard.policy:"),
        "refused by the shipped file's explicit deny: {line}"
    );
    sim.assert_refused(
        "k_client",
        "",
        "qubes.ConnectTCP+8780",
        "30-chromecard.policy:",
    );
    sim.assert_refused(
        "k_client",
        "@default",
        "qubes.ConnectTCP+8780",
        "30-chromecard.policy:",
    );

    // The runbook-style forwarder in k_client: it listens, but every connection is refused.
    sim.ctl(
        &["bg", "try", "k_client"],
        &[
            "--wait-port",
            "9780",
            "--",
            "qvm-connect-tcp",
            "9780:k_server:8780",
        ],
    );
    let ran = sim.exec(
        "k_client",
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "--cacert",
            "tls/phase2/ca.crt",
            "https://127.0.0.1:9780/healthz",
        ],
    );
    assert!(
        !ran.success() && ran.stdout.is_empty(),
        "k_client must get no answer from k_server through its own forwarder: {}",
        show(&ran)
    );
    let fwd_log = fs::read_to_string(sim.state().join("logs/try.log")).unwrap_or_default();
    assert!(
        fwd_log.contains("Request refused"),
        "the forwarder's qrexec-client-vm must report \"Request refused\":\n{fwd_log}"
    );
    sim.ctl(&["stop", "try"], &[]);
    // And without any forwarder, k_client's own 127.0.0.1:8780 is not k_server.
    let ran = sim.exec(
        "k_client",
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "--cacert",
            "tls/phase2/ca.crt",
            "https://127.0.0.1:8780/healthz",
        ],
    );
    assert!(
        !ran.success(),
        "k_client has no network path to k_server: {}",
        show(&ran)
    );
}

/// A qube the policy does not name (k_other) is refused on both chain ports, named or
/// @default; so are the chain's qubes in the wrong direction or on other ports.
#[test]
fn refused_qube_not_named_in_policy() {
    let Some(_guard) = namespaces_or_skip("refused_qube_not_named_in_policy") else {
        return;
    };
    let sim = Sim::up(&[]);
    sim.assert_allowed("k_client", "k_proxy", "qubes.ConnectTCP+8771", "k_proxy");
    for (target, service) in [
        ("k_proxy", "qubes.ConnectTCP+8771"),
        ("k_server", "qubes.ConnectTCP+8780"),
        ("", "qubes.ConnectTCP+8771"),
        ("", "qubes.ConnectTCP+8780"),
    ] {
        sim.assert_refused("k_other", target, service, "30-chromecard.policy:");
    }
    // Any other port falls through to dom0's default deny.
    sim.assert_refused(
        "k_other",
        "k_proxy",
        "qubes.ConnectTCP+22",
        "90-default.policy:",
    );
    // Wrong direction, and a chain qube on a port the policy does not open.
    sim.assert_refused(
        "k_server",
        "k_proxy",
        "qubes.ConnectTCP+8771",
        "30-chromecard.policy:",
    );
    sim.assert_refused(
        "k_proxy",
        "k_server",
        "qubes.ConnectTCP+22",
        "90-default.policy:",
    );
    // A target that is not a qube at all is evaluated as @default, as dom0 does: k_other
    // and k_client are still refused on 8780 (block 3 matches @default too) ...
    sim.assert_refused(
        "k_other",
        "no_such_qube",
        "qubes.ConnectTCP+8780",
        "30-chromecard.policy:",
    );
    sim.assert_refused(
        "k_client",
        "no_such_qube",
        "qubes.ConnectTCP+8780",
        "30-chromecard.policy:",
    );
    // ... while k_proxy's call goes where its @default rule says, k_server.
    let ran = sim.exec(
        "k_proxy",
        &["qrexec-client-vm", "no_such_qube", "qubes.ConnectTCP+8780"],
    );
    assert!(ran.success(), "{}", show(&ran));
    let journal = sim.dom0_journal();
    assert!(
        journal.ends_with(
            "qrexec: target 'no_such_qube' does not exist, using @default instead\n\
             qrexec: qubes.ConnectTCP+8780: k_proxy -> @default: allowed to k_server\n"
        ),
        "{journal}"
    );
}

/// The target qube's side of qubes.ConnectTCP behaves as qrexec-agent 4.2.33+ does: one
/// connection to IPv4 127.0.0.1:PORT; nothing listening there (or a listener on ::1 only)
/// makes the allowed call end at once with exit 125 and nothing on the caller's stderr.
#[test]
fn connect_tcp_reaches_ipv4_loopback_only_and_exits_125() {
    let Some(_guard) = namespaces_or_skip("connect_tcp_reaches_ipv4_loopback_only_and_exits_125")
    else {
        return;
    };
    let sim = Sim::up(&[]);
    sim.ctl(&["stop", "k_server"], &[]);
    let call = || {
        sim.exec(
            "k_proxy",
            &["qrexec-client-vm", "k_server", "qubes.ConnectTCP+8780"],
        )
    };
    let assert_125 = |what: &str| {
        let ran = call();
        assert_eq!(
            ran.status.and_then(|s| s.code()),
            Some(125),
            "{what}: the call is allowed but nothing listens on 127.0.0.1:8780: {}",
            show(&ran)
        );
        assert_eq!(ran.stderr, "", "{what}: the caller sees no message");
        assert_eq!(
            sim.dom0_last(),
            "qrexec: qubes.ConnectTCP+8780: k_proxy -> k_server: allowed to k_server"
        );
    };
    assert_125("k_server stopped");
    let agent_log =
        fs::read_to_string(sim.state().join("logs/qrexec-agent-k_server.log")).unwrap_or_default();
    assert!(agent_log.contains("connect:"), "{agent_log}");

    // A listener on ::1 only is not reached (where the namespace has IPv6 at all).
    let lo = sim.exec("k_server", &["ip", "-6", "addr", "show", "dev", "lo"]);
    if lo.stdout.contains("::1/128") {
        sim.ctl(
            &["bg", "v6", "k_server"],
            &[
                "--wait-port",
                "8780",
                "--",
                "socat",
                "TCP6-LISTEN:8780,bind=[::1],reuseaddr,fork",
                "SYSTEM:echo from-v6",
            ],
        );
        assert_eq!(
            listeners_in(&sim, "k_server", 8780),
            vec!["[::1]:8780".to_string()]
        );
        assert_125("a listener on [::1]:8780 only");
        sim.ctl(&["stop", "v6"], &[]);
    } else {
        eprintln!("no ::1 in the simulated qubes: the IPv6 half of this test is not run");
    }

    // On 127.0.0.1 it is reached, and the call ends with exit 0.
    sim.ctl(
        &["bg", "v4", "k_server"],
        &[
            "--wait-port",
            "8780",
            "--",
            "socat",
            "TCP4-LISTEN:8780,bind=127.0.0.1,reuseaddr,fork",
            "SYSTEM:echo from-v4",
        ],
    );
    let ran = call();
    assert!(
        ran.success() && ran.stdout.contains("from-v4"),
        "a listener on 127.0.0.1:8780 is reached: {}",
        show(&ran)
    );
}

/// The prototype's mistake: `@default` destinations with `target=`, and the runbook's
/// named-target calls. Refused (the old blocker), while the shipped policy allows the same
/// calls and the runbook then passes.
#[test]
fn prototype_default_target_policy_refuses_named_calls_shipped_policy_allows() {
    let Some(_guard) = namespaces_or_skip(
        "prototype_default_target_policy_refuses_named_calls_shipped_policy_allows",
    ) else {
        return;
    };
    let sim = Sim::up(&["--policy", "prototype"]);
    // The runbook's named calls: no rule of the prototype matches; 90-default denies.
    sim.assert_refused(
        "k_proxy",
        "k_server",
        "qubes.ConnectTCP+8780",
        "90-default.policy:",
    );
    sim.assert_refused(
        "k_client",
        "k_proxy",
        "qubes.ConnectTCP+8771",
        "90-default.policy:",
    );
    // Its rules do work, for calls that name no target.
    sim.assert_allowed("k_proxy", "", "qubes.ConnectTCP+8780", "k_server");
    sim.assert_allowed("k_client", "@default", "qubes.ConnectTCP+8771", "k_proxy");
    // So the chain built with the runbook's lines fails: the old blocker.
    let ran = sim.runbook_from_k_client();
    assert!(
        !ran.success() && ran.stderr.contains("FAIL step 1"),
        "under the prototype's policy the runbook must fail at once (9771 is refused): {}",
        show(&ran)
    );
    // (Inside k_proxy the login works and the counter answers 502 upstream_unavailable:
    // checked by splitvm_simulation_runbook_through_both_forwards.)

    // dom0 gets the shipped policy; the same named calls, the same qvm-connect-tcp lines.
    sim.ctl(&["policy", "shipped"], &[]);
    sim.ctl(&["forwards", "qvm"], &[]);
    sim.assert_allowed("k_proxy", "k_server", "qubes.ConnectTCP+8780", "k_server");
    sim.assert_allowed("k_client", "k_proxy", "qubes.ConnectTCP+8771", "k_proxy");
    sim.assert_runbook_passes("shipped policy after the prototype's");
    let journal = sim.dom0_journal();
    assert!(
        journal.contains("k_proxy -> k_server: denied: denied by policy")
            && journal.contains("k_proxy -> k_server: allowed to k_server"),
        "dom0's journal shows the same call refused, then allowed:\n{journal}"
    );
}

// ---------------------------------------------------------------------------------------
// Binding and units
// ---------------------------------------------------------------------------------------

/// Local listening addresses on `port` inside `qube` (`ss -Hltn`).
fn listeners_in(sim: &Sim, qube: &str, port: u16) -> Vec<String> {
    let ran = sim.exec(qube, &["ss", "-Hltn", &format!("sport = :{port}")]);
    assert!(ran.success(), "ss in {qube}: {}", show(&ran));
    ran.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// k_server and k_proxy started WITHOUT --host listen on 127.0.0.1 only (IPv4), and the
/// chain works through qubes.ConnectTCP, which connects to localhost in the target qube.
#[test]
fn servers_bind_ipv4_loopback_by_default_in_qubes() {
    let Some(_guard) = namespaces_or_skip("servers_bind_ipv4_loopback_by_default_in_qubes") else {
        return;
    };
    let sim = Sim::up(&["--default-host", "--forwards", "units"]);
    let cmdlines = fs::read_to_string(sim.state().join("logs/k_server.log")).unwrap_or_default()
        + &fs::read_to_string(sim.state().join("logs/k_proxy.log")).unwrap_or_default();
    assert!(
        !cmdlines.contains("--host"),
        "this test starts both servers without --host:\n{cmdlines}"
    );
    assert_eq!(
        listeners_in(&sim, "k_server", 8780),
        vec!["127.0.0.1:8780".to_string()]
    );
    assert_eq!(
        listeners_in(&sim, "k_proxy", 8771),
        vec!["127.0.0.1:8771".to_string()]
    );
    // qubes.ConnectTCP (qrexec-agent connects to 127.0.0.1:PORT in the target) reaches
    // both: the call exits 0 only if that connection was made (125 otherwise).
    sim.assert_allowed("k_proxy", "k_server", "qubes.ConnectTCP+8780", "k_server");
    sim.assert_allowed("k_client", "k_proxy", "qubes.ConnectTCP+8771", "k_proxy");
    // And a request through both forwarders (the socket units) to k_server and back.
    let tok = sim.exec(
        "k_client",
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--cacert",
            "tls/phase2/ca.crt",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            r#"{"username":"alice"}"#,
            "https://127.0.0.1:9771/session/login",
        ],
    );
    let v: Value = serde_json::from_str(&tok.stdout)
        .unwrap_or_else(|e| panic!("login through 9771: not JSON ({e}): {}", show(&tok)));
    let token = v["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login through 9771 gave no token: {}", show(&tok)));
    let counter = sim.exec(
        "k_client",
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--cacert",
            "tls/phase2/ca.crt",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "https://127.0.0.1:9771/resource/counter",
        ],
    );
    let v: Value = serde_json::from_str(&counter.stdout).unwrap_or_else(|e| {
        panic!(
            "counter through the chain: not JSON ({e}): {}",
            show(&counter)
        )
    });
    assert_eq!(v["counter"], json!(1), "{}", show(&counter));
}

/// `systemd-analyze verify` passes on every shipped unit, installed both ways by
/// qubes/install.sh (see scripts/sim/verify-units.sh for what the scratch roots hold).
#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    require_tool("systemd-analyze", "--version");
    bin_path("k_server");
    bin_path("k_proxy");
    let ran = run(
        Command::new(workspace_file("scripts/sim/verify-units.sh"))
            .arg("--bin-dir")
            .arg(bin_dir()),
        None,
        Duration::from_secs(120),
    );
    assert!(ran.success(), "verify-units.sh failed: {}", show(&ran));
    assert!(
        ran.stdout
            .contains("verify-units: all shipped units pass systemd-analyze verify"),
        "{}",
        show(&ran)
    );
}

// ---------------------------------------------------------------------------------------
// The policy itself (no namespaces needed)
// ---------------------------------------------------------------------------------------

/// Evaluates calls against a policy directory with the simulation's dom0 stand-in.
fn decide(dir: &Path, source: &str, target: &str, service: &str) -> Option<String> {
    let ran = run(
        Command::new(workspace_file("scripts/sim/qrexec-dom0"))
            .arg("--policy-dir")
            .arg(dir)
            .args([
                "--qubes",
                "k_client,k_proxy,k_server,k_other",
                "evaluate",
                source,
                target,
                service,
            ]),
        None,
        Duration::from_secs(30),
    );
    match ran.status.and_then(|s| s.code()) {
        Some(0) => Some(ran.stdout.trim().to_string()),
        Some(1) => None,
        _ => panic!("qrexec-dom0 failed: {}", show(&ran)),
    }
}

fn policy_dir(files: &[(&str, PathBuf)]) -> TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, src) in files {
        fs::copy(src, d.path().join(name)).expect("copy policy file");
    }
    d
}

/// The shipped policy file, decision by decision: exactly the two hops (named or
/// @default), nothing else on the chain's ports; the prototype's rules allow only the
/// @default calls.
#[test]
fn shipped_policy_allows_exactly_the_two_hops() {
    let shipped = policy_dir(&[
        (
            "30-chromecard.policy",
            workspace_file("qubes/policy.d/30-chromecard.policy"),
        ),
        (
            "90-default.policy",
            workspace_file("scripts/sim/90-default.policy"),
        ),
    ]);
    let ran = run(
        Command::new(workspace_file("scripts/sim/qrexec-dom0"))
            .arg("--policy-dir")
            .arg(shipped.path())
            .arg("check"),
        None,
        Duration::from_secs(30),
    );
    assert!(
        ran.success(),
        "the shipped policy must parse: {}",
        show(&ran)
    );

    let d = shipped.path();
    let allowed = |src, tgt, svc| decide(d, src, tgt, svc);
    assert_eq!(
        allowed("k_client", "k_proxy", "qubes.ConnectTCP+8771").as_deref(),
        Some("k_proxy")
    );
    assert_eq!(
        allowed("k_proxy", "k_server", "qubes.ConnectTCP+8780").as_deref(),
        Some("k_server")
    );
    assert_eq!(
        allowed("k_client", "", "qubes.ConnectTCP+8771").as_deref(),
        Some("k_proxy")
    );
    assert_eq!(
        allowed("k_proxy", "@default", "qubes.ConnectTCP+8780").as_deref(),
        Some("k_server")
    );
    for (src, tgt, svc) in [
        ("k_client", "k_server", "qubes.ConnectTCP+8780"),
        ("k_client", "", "qubes.ConnectTCP+8780"),
        ("k_client", "k_proxy", "qubes.ConnectTCP+8780"),
        ("k_client", "k_proxy", "qubes.ConnectTCP+22"),
        ("k_client", "k_server", "qubes.ConnectTCP+8771"),
        ("k_proxy", "k_client", "qubes.ConnectTCP+8771"),
        ("k_proxy", "k_server", "qubes.ConnectTCP+8771"),
        ("k_proxy", "k_server", "qubes.ConnectTCP"),
        ("k_server", "k_proxy", "qubes.ConnectTCP+8771"),
        ("k_server", "k_proxy", "qubes.ConnectTCP+8780"),
        ("k_other", "k_proxy", "qubes.ConnectTCP+8771"),
        ("k_other", "k_server", "qubes.ConnectTCP+8780"),
        ("k_other", "", "qubes.ConnectTCP+8771"),
        ("k_client", "k_proxy", "qubes.VMShell+8771"),
    ] {
        assert_eq!(
            allowed(src, tgt, svc),
            None,
            "{src} -> {tgt:?} {svc} must be denied by the shipped policy"
        );
    }

    let prototype = policy_dir(&[
        (
            "30-prototype.policy",
            workspace_file("scripts/sim/prototype.policy"),
        ),
        (
            "90-default.policy",
            workspace_file("scripts/sim/90-default.policy"),
        ),
    ]);
    let p = prototype.path();
    assert_eq!(
        decide(p, "k_proxy", "k_server", "qubes.ConnectTCP+8780"),
        None,
        "the prototype's @default rule must not match a named-target call"
    );
    assert_eq!(
        decide(p, "k_client", "k_proxy", "qubes.ConnectTCP+8771"),
        None
    );
    assert_eq!(
        decide(p, "k_proxy", "", "qubes.ConnectTCP+8780").as_deref(),
        Some("k_server")
    );
    assert_eq!(
        decide(p, "k_client", "@default", "qubes.ConnectTCP+8771").as_deref(),
        Some("k_proxy")
    );
}

/// `*` as a source or target matches every qube (Qubes' WildcardVM), not a qube named `*`;
/// `target=*` is a syntax error.
#[test]
fn dom0_stand_in_star_matches_every_qube() {
    let dir = policy_dir(&[(
        "90-default.policy",
        workspace_file("scripts/sim/90-default.policy"),
    )]);
    let d = dir.path();
    fs::write(
        d.join("10-star.policy"),
        "qubes.ConnectTCP  +1  *        *         deny\n\
         qubes.ConnectTCP  +1  k_proxy  k_server  allow\n\
         qubes.ConnectTCP  +2  *        k_server  allow\n\
         qubes.ConnectTCP  +3  k_proxy  *         allow target=k_server\n",
    )
    .expect("write policy");
    // `* *` deny comes first: it matches, so the allow below it never does.
    assert_eq!(decide(d, "k_proxy", "k_server", "qubes.ConnectTCP+1"), None);
    assert_eq!(decide(d, "k_other", "", "qubes.ConnectTCP+1"), None);
    let journal = d.join("journal.log");
    let ran = run(
        Command::new(workspace_file("scripts/sim/qrexec-dom0"))
            .arg("--policy-dir")
            .arg(d)
            .args(["--qubes", "k_client,k_proxy,k_server,k_other", "--log"])
            .arg(&journal)
            .args(["evaluate", "k_proxy", "k_server", "qubes.ConnectTCP+1"]),
        None,
        Duration::from_secs(30),
    );
    assert!(!ran.success(), "{}", show(&ran));
    let line = fs::read_to_string(&journal).unwrap_or_default();
    assert!(
        line.contains("denied: denied by policy") && line.contains("10-star.policy:1"),
        "the `* *` line decides: {line}"
    );
    // `*` as source: every qube.
    for src in ["k_client", "k_proxy", "k_other"] {
        assert_eq!(
            decide(d, src, "k_server", "qubes.ConnectTCP+2").as_deref(),
            Some("k_server"),
            "{src}: `*` source must match"
        );
    }
    assert_eq!(decide(d, "k_client", "k_proxy", "qubes.ConnectTCP+2"), None);
    // `*` as target: named calls and @default calls alike.
    for tgt in ["k_client", "k_server", "", "@default"] {
        assert_eq!(
            decide(d, "k_proxy", tgt, "qubes.ConnectTCP+3").as_deref(),
            Some("k_server"),
            "k_proxy -> {tgt:?}: `*` target must match"
        );
    }
    assert_eq!(decide(d, "k_client", "k_proxy", "qubes.ConnectTCP+3"), None);

    fs::write(
        d.join("20-bad.policy"),
        "qubes.ConnectTCP  +4  k_proxy  k_server  allow target=*\n",
    )
    .expect("write policy");
    let ran = run(
        Command::new(workspace_file("scripts/sim/qrexec-dom0"))
            .arg("--policy-dir")
            .arg(d)
            .arg("check"),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !ran.success() && ran.stderr.contains("invalid redirect token"),
        "`target=*` must not parse: {}",
        show(&ran)
    );
}

/// A call naming a qube that does not exist is evaluated as a call to `@default`, as dom0
/// does (IntendedTarget.verify), under the shipped policy: k_proxy's misspelt target still
/// reaches k_server through the `@default` rule, k_client's is still refused on 8780.
#[test]
fn dom0_stand_in_missing_qube_is_default() {
    let shipped = policy_dir(&[
        (
            "30-chromecard.policy",
            workspace_file("qubes/policy.d/30-chromecard.policy"),
        ),
        (
            "90-default.policy",
            workspace_file("scripts/sim/90-default.policy"),
        ),
    ]);
    let d = shipped.path();
    let journal = d.join("journal.log");
    let decide_logged = |src: &str, tgt: &str, svc: &str| -> (Option<String>, String) {
        let _ = fs::remove_file(&journal);
        let ran = run(
            Command::new(workspace_file("scripts/sim/qrexec-dom0"))
                .arg("--policy-dir")
                .arg(d)
                .args(["--qubes", "k_client,k_proxy,k_server,k_other", "--log"])
                .arg(&journal)
                .args(["evaluate", src, tgt, svc]),
            None,
            Duration::from_secs(30),
        );
        let dest = match ran.status.and_then(|s| s.code()) {
            Some(0) => Some(ran.stdout.trim().to_string()),
            Some(1) => None,
            _ => panic!("qrexec-dom0 failed: {}", show(&ran)),
        };
        (dest, fs::read_to_string(&journal).unwrap_or_default())
    };

    let (dest, log) = decide_logged("k_proxy", "k_sever", "qubes.ConnectTCP+8780");
    assert_eq!(dest.as_deref(), Some("k_server"), "{log}");
    assert_eq!(
        log,
        "qrexec: target 'k_sever' does not exist, using @default instead\n\
         qrexec: qubes.ConnectTCP+8780: k_proxy -> @default: allowed to k_server\n"
    );
    let (dest, log) = decide_logged("k_client", "no_such_qube", "qubes.ConnectTCP+8771");
    assert_eq!(dest.as_deref(), Some("k_proxy"), "{log}");
    let (dest, log) = decide_logged("k_client", "no_such_qube", "qubes.ConnectTCP+8780");
    assert_eq!(dest, None, "{log}");
    assert!(
        log.contains("k_client -> no_such_qube: denied: denied by policy")
            && log.contains("30-chromecard.policy:"),
        "{log}"
    );
    // Under the prototype's policy (only @default rules), the same misspelt call is allowed
    // too, while the correctly named one is refused: the old blocker, from the other side.
    let prototype = policy_dir(&[
        (
            "30-prototype.policy",
            workspace_file("scripts/sim/prototype.policy"),
        ),
        (
            "90-default.policy",
            workspace_file("scripts/sim/90-default.policy"),
        ),
    ]);
    let p = prototype.path();
    assert_eq!(
        decide(p, "k_proxy", "k_sever", "qubes.ConnectTCP+8780").as_deref(),
        Some("k_server")
    );
    assert_eq!(
        decide(p, "k_proxy", "k_server", "qubes.ConnectTCP+8780"),
        None
    );
    // An `allow target=Q` where Q does not exist: no target, denied.
    let dir = policy_dir(&[]);
    fs::write(
        dir.path().join("10-gone.policy"),
        "qubes.ConnectTCP  +5  k_proxy  @default  allow target=gone\n",
    )
    .expect("write policy");
    assert_eq!(
        decide(dir.path(), "k_proxy", "", "qubes.ConnectTCP+5"),
        None
    );
}

// ---------------------------------------------------------------------------------------
// qubes/install.sh and appvm-boot.sh on a scratch root (no namespaces, no root needed)
// ---------------------------------------------------------------------------------------

/// A scratch qube: `root/` for `install.sh --root`, stand-in binaries (install.sh only
/// copies them) and the files `install.sh secrets` takes.
struct FakeQube {
    dir: TempDir,
}

impl FakeQube {
    fn new() -> FakeQube {
        let dir = tempfile::Builder::new()
            .prefix("chromecard-qube-")
            .tempdir()
            .expect("tempdir");
        let p = dir.path();
        // Traversable by others, so that a non-root user can try to read what is inside.
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in ["root/etc", "bin", "tls"] {
            fs::create_dir_all(p.join(d)).expect("mkdir");
        }
        fs::write(p.join("root/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(p.join("root/etc/group"), "root:x:0:\n").expect("group");
        for b in ["k_server", "k_proxy"] {
            fs::write(p.join("bin").join(b), "#!/bin/sh\n").expect("bin");
            fs::set_permissions(p.join("bin").join(b), fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        for f in [
            "ca.crt",
            "k_server.crt",
            "k_server.key",
            "k_proxy.crt",
            "k_proxy.key",
        ] {
            fs::write(p.join("tls").join(f), format!("stand-in {f}\n")).expect("tls");
        }
        fs::write(p.join("proxy-token"), "stand-in-token\n").expect("token");
        FakeQube { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `install.sh CMD --role ROLE --root ROOT ...` (appvm: --no-activate, stand-in binaries;
    /// secrets: the stand-in certificates and, but for k_client, the stand-in token).
    fn install(&self, cmd: &str, role: &str) -> Ran {
        let token: &[&str] = if cmd == "secrets" && role != "k_client" {
            &["--proxy-token-file", "proxy-token"]
        } else {
            &[]
        };
        self.install_with(cmd, role, token)
    }

    /// [`FakeQube::install`] with `extra` arguments in place of the stand-in token (run
    /// in the qube's staging directory, so relative paths name its files).
    fn install_with(&self, cmd: &str, role: &str, extra: &[&str]) -> Ran {
        let p = self.dir.path();
        let mut c = Command::new(workspace_file("qubes/install.sh"));
        c.current_dir(p)
            .args([cmd, "--role", role, "--root"])
            .arg(self.root());
        match cmd {
            "appvm" => {
                c.arg("--bin-dir").arg(p.join("bin")).arg("--no-activate");
            }
            "secrets" => {
                c.arg("--tls-dir").arg(p.join("tls"));
            }
            _ => panic!("install {cmd}?"),
        }
        run(c.args(extra), None, Duration::from_secs(60))
    }

    fn install_ok(&self, cmd: &str, role: &str) {
        let ran = self.install(cmd, role);
        assert!(
            ran.success(),
            "install.sh {cmd} --role {role}: {}",
            show(&ran)
        );
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.root().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }

    /// One boot of an app qube: `/etc` fresh from `template_etc`, then boot.sh (staged
    /// below the root: systemd-sysusers --root, systemctl printed, not run).
    fn boot(&self, template_etc: &Path) -> Ran {
        let etc = self.root().join("etc");
        fs::remove_dir_all(&etc).expect("rm etc");
        fs::create_dir_all(&etc).expect("mkdir etc");
        for e in fs::read_dir(template_etc).expect("template etc").flatten() {
            if e.path().is_file() {
                fs::copy(e.path(), etc.join(e.file_name())).expect("copy etc");
            }
        }
        let ran = run(
            Command::new(self.root().join("rw/config/chromecard/boot/boot.sh"))
                .env("CHROMECARD_ROOT", self.root()),
            None,
            Duration::from_secs(60),
        );
        assert!(ran.success(), "boot.sh: {}", show(&ran));
        ran
    }

    /// The UID of `user` in the root's /etc/passwd.
    fn uid(&self, user: &str) -> Option<u32> {
        id_in(&self.root().join("etc/passwd"), user)
    }
}

fn id_in(file: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok())?
        })
}

fn is_root() -> bool {
    let ran = run(Command::new("id").arg("-u"), None, Duration::from_secs(10));
    ran.stdout.trim() == "0"
}

/// `install.sh appvm` puts boot.sh into an rc.local the user already has where it runs:
/// before a top-level `exit`, or on a line of its own after a last line without a
/// newline; and only once.
#[test]
fn install_puts_boot_sh_where_an_existing_rc_local_runs_it() {
    let boot = "/rw/config/chromecard/boot/boot.sh";
    for (before, want) in [
        (
            "#!/bin/sh\necho hello\nexit 0\n",
            format!("#!/bin/sh\necho hello\n{boot}\nexit 0\n"),
        ),
        (
            "#!/bin/sh\necho no newline",
            format!("#!/bin/sh\necho no newline\n{boot}\n"),
        ),
    ] {
        let q = FakeQube::new();
        let rc = q.root().join("rw/config/rc.local");
        fs::create_dir_all(rc.parent().expect("rw/config")).expect("mkdir rw/config");
        fs::write(&rc, before).expect("write rc.local");
        q.install_ok("appvm", "k_server");
        q.install_ok("appvm", "k_server");
        assert_eq!(
            fs::read_to_string(&rc).expect("rc.local"),
            want,
            "from {before:?}"
        );
        assert_eq!(q.mode("rw/config/rc.local"), 0o755);
    }
}

/// Renewing certificates with `install.sh secrets` (no --proxy-token-file) keeps the token
/// the qube holds, so k_server and k_proxy stay a pair; only --new-token replaces it.
#[test]
fn install_secrets_keeps_the_proxy_token_unless_asked_for_a_new_one() {
    let q = FakeQube::new();
    let token_file = q.root().join("rw/config/chromecard/proxy-token");
    let secrets = |extra: &[&str]| {
        let ran = q.install_with("secrets", "k_server", extra);
        assert!(
            ran.success(),
            "install.sh secrets {extra:?}: {}",
            show(&ran)
        );
        fs::read_to_string(&token_file).expect("the token file")
    };
    q.install_ok("secrets", "k_server");
    assert_eq!(
        secrets(&[]),
        "stand-in-token\n",
        "the installed token was replaced"
    );
    let fresh = secrets(&["--new-token"]);
    assert_ne!(fresh, "stand-in-token\n");
    assert_eq!(fresh.trim().len(), 64, "{fresh:?}");
    assert_eq!(q.mode("rw/config/chromecard/proxy-token"), 0o600);
}

/// `install.sh secrets --role k_client` makes /rw/config/chromecard readable for curl run
/// as `user`; `install.sh appvm --role k_client` must keep it so, whichever runs first (it
/// used to re-mode the directory to 0700). k_server's secrets stay root only either way.
#[test]
fn install_keeps_k_client_ca_readable_in_both_orders() {
    let ca = "rw/config/chromecard/tls/ca.crt";
    for order in [
        &["secrets", "appvm"][..],
        &["appvm", "secrets"][..],
        &["secrets", "appvm", "appvm", "secrets"][..],
    ] {
        let q = FakeQube::new();
        for cmd in order {
            q.install_ok(cmd, "k_client");
        }
        for (rel, want) in [
            ("rw/config/chromecard", 0o755),
            ("rw/config/chromecard/tls", 0o755),
            (ca, 0o644),
        ] {
            assert_eq!(
                q.mode(rel),
                want,
                "{order:?}: {rel} is {:o}, must be {want:o}",
                q.mode(rel)
            );
        }
        for rel in ["rw", "rw/config"] {
            assert_eq!(
                q.mode(rel) & 0o005,
                0o005,
                "{order:?}: {rel} must be traversable"
            );
        }
        assert!(
            !q.root()
                .join("rw/config/chromecard/boot/chromecard.conf")
                .exists(),
            "{order:?}: k_client gets no service user"
        );
        if is_root() {
            // Read it as a user that is neither root nor its owner, as curl run by `user` does.
            let ran = run(
                Command::new("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
                    .arg(q.root().join(ca)),
                None,
                Duration::from_secs(10),
            );
            assert!(
                ran.success() && ran.stdout == "stand-in ca.crt\n",
                "{order:?}: the CA must be readable by uid 65534: {}",
                show(&ran)
            );
        }
    }

    for order in [&["secrets", "appvm"][..], &["appvm", "secrets"][..]] {
        let q = FakeQube::new();
        for cmd in order {
            q.install_ok(cmd, "k_server");
        }
        assert_eq!(q.mode("rw/config/chromecard"), 0o700, "{order:?}");
        assert_eq!(
            q.mode("rw/config/chromecard/proxy-token"),
            0o600,
            "{order:?}"
        );
        assert_eq!(
            q.mode("rw/config/chromecard/tls/k_server.key"),
            0o600,
            "{order:?}"
        );
        assert!(
            q.root()
                .join("rw/config/chromecard/boot/chromecard.conf")
                .exists(),
            "{order:?}: k_server gets the service user"
        );
    }
}

/// The service user's UID is fixed (qubes/sysusers.d/chromecard.conf): two boots of an app
/// qube (fresh /etc from the template each time, then boot.sh and systemd-sysusers), with
/// another system account added to the template in between, give it the same UID. The
/// same boots with the UID left to systemd-sysusers (the old file) do not: the test has
/// teeth.
#[test]
fn service_uid_is_stable_across_boots() {
    require_tool("systemd-sysusers", "--version");
    let fixed = 820;
    let conf = fs::read_to_string(workspace_file("qubes/sysusers.d/chromecard.conf"))
        .expect("sysusers file");
    assert!(
        conf.lines()
            .any(|l| l.split_whitespace().take(3).eq(["u", "chromecard", "820"])),
        "the shipped sysusers file pins UID 820:\n{conf}"
    );

    let boots = |pinned: bool| -> (Option<u32>, Option<u32>, String) {
        let template = tempfile::tempdir().expect("tempdir");
        let t_etc = template.path().join("etc");
        fs::create_dir_all(&t_etc).expect("mkdir");
        fs::write(t_etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(t_etc.join("group"), "root:x:0:\n").expect("group");
        let q = FakeQube::new();
        q.install_ok("appvm", "k_server");
        if !pinned {
            let boot_conf = q.root().join("rw/config/chromecard/boot/chromecard.conf");
            let text = fs::read_to_string(&boot_conf).expect("conf");
            fs::write(
                &boot_conf,
                text.replace("chromecard 820 ", "chromecard -   "),
            )
            .expect("unpin");
        }
        let first = q.boot(&t_etc);
        let uid1 = q.uid("chromecard");
        // The template gets another system account (a package, a new template).
        let other = template.path().join("other.conf");
        fs::write(&other, "u otherd - \"another service\"\n").expect("conf");
        let ran = run(
            Command::new("systemd-sysusers")
                .arg(format!("--root={}", template.path().display()))
                .arg(&other),
            None,
            Duration::from_secs(30),
        );
        assert!(
            ran.success(),
            "systemd-sysusers in the template: {}",
            show(&ran)
        );
        assert!(id_in(&t_etc.join("passwd"), "otherd").is_some());
        let second = q.boot(&t_etc);
        let uid2 = q.uid("chromecard");
        (uid1, uid2, format!("{}{}", show(&first), show(&second)))
    };

    let (uid1, uid2, out) = boots(true);
    assert_eq!(uid1, Some(fixed), "first boot: {out}");
    assert_eq!(
        uid2,
        Some(fixed),
        "second boot, after another account: {out}"
    );
    assert!(!out.contains("not 820"), "{out}");

    let (uid1, uid2, out) = boots(false);
    assert!(
        uid1.is_some() && uid2.is_some() && uid1 != uid2,
        "control: without the fixed UID the second boot must give another UID ({uid1:?} vs {uid2:?}): {out}"
    );
}

/// install.sh refuses to install a service user whose fixed UID or GID belongs to another
/// account, and accepts one that is free or already chromecard's; k_client needs none.
#[test]
fn install_checks_the_fixed_uid() {
    let q = FakeQube::new();
    let etc = q.root().join("etc");
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nsquatter:x:820:820::/:/bin/false\n",
    )
    .expect("passwd");
    for role in ["k_server", "k_proxy"] {
        let ran = q.install("appvm", role);
        assert!(
            !ran.success() && ran.stderr.contains("UID 820") && ran.stderr.contains("'squatter'"),
            "{role}: must refuse: {}",
            show(&ran)
        );
    }
    q.install_ok("appvm", "k_client");
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nchromecard:x:820:820::/rw/chromecard:/usr/sbin/nologin\n",
    )
    .expect("passwd");
    q.install_ok("appvm", "k_server");
    fs::write(etc.join("group"), "root:x:0:\nsquatters:x:820:\n").expect("group");
    let ran = q.install("appvm", "k_proxy");
    assert!(
        !ran.success() && ran.stderr.contains("GID 820"),
        "a taken GID must be refused: {}",
        show(&ran)
    );
    // The template install checks it before anything else.
    let ran = run(
        Command::new(workspace_file("qubes/install.sh"))
            .args(["template", "--root"])
            .arg(q.root()),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !ran.success() && ran.stderr.contains("GID 820"),
        "template: {}",
        show(&ran)
    );
}

/// boot.sh starts the units without blocking (rc.local runs inside a boot unit), makes the
/// service user only where a service runs, and puts the units where systemd reads them.
#[test]
fn appvm_boot_starts_units_without_blocking() {
    require_tool("systemd-sysusers", "--version");
    let template = tempfile::tempdir().expect("tempdir");
    let t_etc = template.path().join("etc");
    fs::create_dir_all(&t_etc).expect("mkdir");
    fs::write(t_etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(t_etc.join("group"), "root:x:0:\n").expect("group");
    for (role, units) in [
        ("k_server", &["k_server.service"][..]),
        (
            "k_proxy",
            &["chromecard-fwd-k_server.socket", "k_proxy.service"][..],
        ),
        ("k_client", &["chromecard-fwd-k_proxy.socket"][..]),
    ] {
        let q = FakeQube::new();
        q.install_ok("appvm", role);
        let ran = q.boot(&t_etc);
        let starts: Vec<&str> = ran
            .stdout
            .lines()
            .filter(|l| l.starts_with("would run: systemctl start"))
            .collect();
        let want: Vec<String> = units
            .iter()
            .map(|u| format!("would run: systemctl start --no-block {u}"))
            .collect();
        assert_eq!(starts, want, "{role}: {}", show(&ran));
        assert!(ran.stdout.contains("would run: systemctl daemon-reload"));
        for u in units {
            assert!(
                q.root().join("run/systemd/system").join(u).is_file(),
                "{role}: {u}"
            );
        }
        assert_eq!(
            q.uid("chromecard"),
            (role != "k_client").then_some(820),
            "{role}: service user"
        );
        assert_eq!(
            ran.stdout.contains("udevadm trigger"),
            role == "k_proxy",
            "{role}: the udev rule is k_proxy's: {}",
            show(&ran)
        );
    }
}

/// The shell steps of the shipped service units, as systemd would run them (`$$` is `$`).
fn unit_shell_steps(unit: &str, key: &str) -> Vec<String> {
    let text =
        fs::read_to_string(workspace_file(&format!("qubes/systemd/{unit}"))).expect("unit file");
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=+/usr/bin/sh -c '")))
        .map(|l| {
            l.strip_suffix('\'')
                .expect("one quoted script")
                .replace("$$", "$")
        })
        .collect()
}

/// The units' own steps, run: the readiness check (ExecStartPost=, which holds
/// qrexec-agent back until the port listens) succeeds where the service listens and keeps
/// waiting where it does not; the re-own step (ExecStartPre=) hands stale files to the
/// service user but leaves root's files, hard links and symbolic-link targets alone.
#[test]
fn unit_readiness_and_reown_steps_work() {
    let Some(_guard) = namespaces_or_skip("unit_readiness_and_reown_steps_work") else {
        return;
    };
    let sim = Sim::up(&[]);
    for (unit, qube) in [
        ("k_server.service", "k_server"),
        ("k_proxy.service", "k_proxy"),
    ] {
        let post = unit_shell_steps(unit, "ExecStartPost");
        assert_eq!(post.len(), 1, "{unit}: one readiness step");
        let ran = sim.exec(qube, &["timeout", "5", "sh", "-c", &post[0]]);
        assert!(ran.success(), "{unit} in {qube}, listening: {}", show(&ran));
        let ran = sim.exec("k_client", &["timeout", "2", "sh", "-c", &post[0]]);
        assert_eq!(
            ran.status.and_then(|s| s.code()),
            Some(124),
            "{unit} in k_client, where nothing listens: still waiting after 2 s: {}",
            show(&ran)
        );
    }
    drop(sim);

    for (unit, dir) in [
        ("k_server.service", "k_server"),
        ("k_proxy.service", "k_proxy"),
    ] {
        let pre = unit_shell_steps(unit, "ExecStartPre");
        let reown: Vec<&String> = pre.iter().filter(|s| s.contains("chown")).collect();
        assert_eq!(reown.len(), 1, "{unit}: one re-own step: {pre:?}");
        let t = tempfile::tempdir().expect("tempdir");
        let state = t.path().join(dir);
        fs::create_dir_all(state.join("sub")).expect("mkdir");
        for f in ["stale", "sub/stale", "linked", "root-owned"] {
            fs::write(state.join(f), f).expect("write");
        }
        fs::write(t.path().join("outside"), "x").expect("write");
        fs::hard_link(state.join("linked"), state.join("linked2")).expect("link");
        std::os::unix::fs::symlink(t.path().join("outside"), state.join("symlink")).expect("ln");
        let chown = |args: &[&str], p: &Path| {
            let ran = run(
                Command::new("chown").args(args).arg(p),
                None,
                Duration::from_secs(10),
            );
            assert!(ran.success(), "chown: {}", show(&ran));
        };
        chown(&["-R", "12345:12345"], &state);
        chown(&["0:0"], &state.join("root-owned"));
        chown(&["4321:4321"], &t.path().join("outside"));
        // The unit's step with its directory here, and uid/gid 65534 for chromecard.
        let script = reown[0]
            .replace(&format!("/rw/chromecard/{dir}"), &s(&state))
            .replace("chromecard:chromecard", "65534:65534")
            .replace(
                "-user chromecard -group chromecard",
                "-user 65534 -group 65534",
            );
        assert!(!script.contains("chromecard"), "{script}");
        let ran = run(
            Command::new("sh").arg("-c").arg(&script),
            None,
            Duration::from_secs(30),
        );
        assert!(ran.success(), "{unit}: {script}: {}", show(&ran));
        use std::os::unix::fs::MetadataExt;
        let owner = |p: &Path| {
            let m = fs::symlink_metadata(p).expect("stat");
            (m.uid(), m.gid())
        };
        for f in ["", "sub", "stale", "sub/stale"] {
            assert_eq!(
                owner(&state.join(f)),
                (65534, 65534),
                "{unit}: {f:?} re-owned"
            );
        }
        assert_eq!(
            owner(&state.join("root-owned")),
            (0, 0),
            "{unit}: root's file left"
        );
        assert_eq!(
            owner(&state.join("linked")),
            (12345, 12345),
            "{unit}: hard link left"
        );
        assert_eq!(
            owner(&state.join("symlink")),
            (12345, 12345),
            "{unit}: symlink left"
        );
        assert_eq!(
            owner(&t.path().join("outside")),
            (4321, 4321),
            "{unit}: never through a symbolic link"
        );

        // The state directory's own step: made for the service user, but never through
        // a symbolic link put in its place (it would hand the link's target over).
        let make: Vec<&String> = pre.iter().filter(|s| s.contains("symbolic link")).collect();
        assert_eq!(
            make.len(),
            1,
            "{unit}: one step that makes the state directory: {pre:?}"
        );
        let make_at = |at: &Path| {
            let script = make[0]
                .replace(&format!("/rw/chromecard/{dir}"), &s(at))
                .replace("-o chromecard -g chromecard", "-o 65534 -g 65534");
            run(
                Command::new("sh").arg("-c").arg(&script),
                None,
                Duration::from_secs(30),
            )
        };
        let fresh = t.path().join("fresh");
        let ran = make_at(&fresh);
        assert!(ran.success(), "{unit}: {}", show(&ran));
        assert_eq!(owner(&fresh), (65534, 65534), "{unit}: made for the user");
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        let swapped = t.path().join("swapped");
        std::os::unix::fs::symlink(&elsewhere, &swapped).expect("ln");
        let ran = make_at(&swapped);
        assert!(
            !ran.success(),
            "{unit}: a link in its place must stop the unit"
        );
        assert_eq!(
            owner(&elsewhere),
            (0, 0),
            "{unit}: the link's target was handed over"
        );
    }
}

/// The CTAP policy (`qubes/policy.d/30-chromecard-ctap.policy`), decision by decision,
/// in front of a stand-in for the qubes-ctap-dom0 package's own rules (any qube may call
/// sys-usb): k_proxy may ask sys-usb for GetInfo, and for assertions only with the
/// credentials enrolled for it (the lines `k_proxy enroll qubes-policy` prints, put in
/// the file as its comments say); a new credential needs the user's yes in dom0; nothing
/// else reaches anywhere from k_proxy.
#[test]
fn ctap_policy_allows_exactly_what_k_proxy_needs_from_sys_usb() {
    // A credential enrolled (with the software key), and the policy lines for it.
    let keys = tempfile::tempdir().expect("tempdir");
    let creds = keys.path().join("credentials");
    let gate = [
        "--gate".to_string(),
        "soft".into(),
        "--soft-key-file".into(),
        s(keys.path().join("soft.key")),
        "--credentials-file".into(),
        s(&creds),
    ];
    let enrolled = Spawn::k_proxy()
        .args(["enroll", "--username", "alice"])
        .args(&gate)
        .run_to_exit(Duration::from_secs(15));
    assert!(
        enrolled.status.is_some_and(|st| st.success()),
        "{enrolled:?}"
    );
    let printed = Spawn::k_proxy()
        .args(["enroll", "qubes-policy"])
        .args(&gate)
        .run_to_exit(Duration::from_secs(15));
    assert!(printed.status.is_some_and(|st| st.success()), "{printed:?}");
    assert!(
        printed.stdout.starts_with("# alice, credential "),
        "{printed:?}"
    );
    let line = printed
        .stdout
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap_or_default()
        .to_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(
        fields.len() == 5
            && fields[..5] == ["u2f.Authenticate", fields[1], "k_proxy", "sys-usb", "allow"]
            && fields[1].len() == 33
            && fields[1].starts_with('+'),
        "{line}"
    );
    let enrolled_handle = format!("u2f.Authenticate{}", fields[1]);
    // The shipped file with that line put before section 4, as its comments ask.
    let shipped = fs::read_to_string(workspace_file("qubes/policy.d/30-chromecard-ctap.policy"))
        .expect("the CTAP policy");
    let section4 = shipped
        .find("\n# 4.")
        .expect("section 4 of the CTAP policy")
        + 1;
    let with_line = format!(
        "{}{}\n{}",
        &shipped[..section4],
        printed.stdout,
        &shipped[section4..]
    );
    let edited = keys.path().join("30-chromecard-ctap.policy");
    fs::write(&edited, with_line).expect("write the edited policy");
    let d = policy_dir(&[
        ("30-chromecard-ctap.policy", edited),
        (
            "30-chromecard.policy",
            workspace_file("qubes/policy.d/30-chromecard.policy"),
        ),
        (
            "90-default.policy",
            workspace_file("scripts/sim/90-default.policy"),
        ),
    ]);
    fs::write(
        d.path().join("50-qubes-ctap.policy"),
        "# Stand-in for the qubes-ctap-dom0 package: any qube may use the key in sys-usb.\n\
         ctap.GetInfo * @anyvm sys-usb allow user=root\n\
         u2f.Authenticate * @anyvm sys-usb allow user=root\n\
         u2f.Register * @anyvm sys-usb allow user=root\n\
         ctap.ClientPin * @anyvm sys-usb allow user=root\n",
    )
    .expect("write the package stand-in");
    let evaluate = |source: &str, target: &str, service: &str| {
        let ran = run(
            Command::new(workspace_file("scripts/sim/qrexec-dom0"))
                .arg("--policy-dir")
                .arg(d.path())
                .args([
                    "--qubes",
                    "k_client,k_proxy,k_server,sys-usb",
                    "evaluate",
                    source,
                    target,
                    service,
                ]),
            None,
            Duration::from_secs(30),
        );
        let allowed = match ran.status.and_then(|s| s.code()) {
            Some(0) => Some(ran.stdout.trim().to_string()),
            Some(1) => None,
            _ => panic!("qrexec-dom0 failed: {}", show(&ran)),
        };
        (allowed, ran.stderr)
    };
    // Any other credential on the key: not for k_proxy.
    let handle = "u2f.Authenticate+0123456789abcdef0123456789abcdef";
    for service in ["ctap.GetInfo", enrolled_handle.as_str()] {
        let (allowed, line) = evaluate("k_proxy", "sys-usb", service);
        assert_eq!(allowed.as_deref(), Some("sys-usb"), "{service}: {line}");
        assert!(
            line.contains("30-chromecard-ctap.policy") || line.contains("allowed"),
            "{line}"
        );
    }
    let (allowed, line) = evaluate("k_proxy", "sys-usb", "u2f.Register");
    assert_eq!(allowed, None);
    assert!(
        line.contains("'ask' at") && line.contains("30-chromecard-ctap.policy:"),
        "enrolment must ask the user in dom0: {line}"
    );
    for (target, service) in [
        ("sys-usb", handle),
        ("sys-usb", "ctap.ClientPin"),
        ("k_server", handle),
        ("k_client", "ctap.GetInfo"),
        ("@default", handle),
        ("", "u2f.Register"),
    ] {
        let (allowed, line) = evaluate("k_proxy", target, service);
        assert_eq!(allowed, None, "k_proxy -> {target:?} {service}: {line}");
        assert!(line.contains("30-chromecard-ctap.policy:"), "{line}");
    }
    // The chain's own hops are unchanged by the second file.
    assert_eq!(
        evaluate("k_proxy", "k_server", "qubes.ConnectTCP+8780")
            .0
            .as_deref(),
        Some("k_server")
    );
}
