//! The virtual USB key (`chromecard-vkey`) against FIDO2 clients nobody here wrote:
//! Yubico's libfido2 through its command-line tools (Debian's `fido2-tools`) and Yubico's
//! python-fido2 (pinned in a virtual environment made by scripts/py-fido2-venv.sh). They
//! are the referee for the key's CTAPHID framing and CTAP2 answers: what they accept and
//! verify, a real browser stack accepts too.
//!
//! Every test needs /dev/uhid, which CI machines lack: scripts/test.sh runs this binary
//! inside a small VM (scripts/vm-run.sh) with `--ignored --test-threads=1`. One at a time:
//! `fido2-token -L` and python-fido2's `list_devices()` see every key attached.
//!
//! python-fido2's interpreter: `$CHROMECARD_PY_FIDO2`, else
//! `<workspace>/target/py-fido2/bin/python` (scripts/py-fido2-venv.sh makes it).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chromecard_e2e::*;

/// How long one client command may take (the VM may be emulated, without KVM).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one python-fido2 script run may take.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(180);

/// A virtual key with a fresh key file in its own temp dir; the key process is
/// killed when this is dropped (and its log printed if the test is failing).
struct Key {
    vkey: VKey,
    dir: TempDir,
}

impl Key {
    fn start(extra: &[&str]) -> Key {
        let dir = tempfile::Builder::new()
            .prefix("chromecard-interop-")
            .tempdir()
            .expect("tempdir");
        let key_file = s(dir.path().join("vkey.key"));
        let mut args = vec!["--key-file", key_file.as_str()];
        args.extend_from_slice(extra);
        let vkey = VKey::start(&args);
        Key { vkey, dir }
    }

    fn path(&self) -> &str {
        &self.vkey.hidraw
    }

    /// Writes `lines` (newline-terminated) to a file in this key's temp dir.
    fn file(&self, name: &str, lines: &[&str]) -> String {
        let p = self.dir.path().join(name);
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(&p, text).expect("write client input");
        s(p)
    }

    fn tmp(&self, name: &str) -> String {
        s(self.dir.path().join(name))
    }
}

/// Runs a client to its end; panics if it does not end within the timeout.
fn client(program: &str, args: &[&str], timeout: Duration) -> Exited {
    // The name only labels the process's temp dir: no slashes.
    let name = Path::new(program)
        .file_name()
        .map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned());
    let out = Spawn::program(&name, program)
        .args(args)
        .run_to_exit(timeout);
    assert!(
        out.status.is_some(),
        "`{}` did not end within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    out
}

/// Runs a client and asserts it succeeded.
fn client_ok(program: &str, args: &[&str]) -> Exited {
    let out = client(program, args, CLIENT_TIMEOUT);
    assert!(
        out.status.is_some_and(|st| st.success()),
        "`{}` failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.cmdline,
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// Runs a client and asserts it failed, mentioning `why` on stderr.
fn client_refused(program: &str, args: &[&str], why: &str) -> Exited {
    let out = client(program, args, CLIENT_TIMEOUT);
    assert!(
        out.status.is_some_and(|st| !st.success()),
        "`{}` should have failed\nstdout:\n{}\nstderr:\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(why),
        "`{}` failed without mentioning `{why}`\nstderr:\n{}",
        out.cmdline,
        out.stderr
    );
    out
}

/// Standard base64 with padding, as libfido2's tools read and write it.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A 32-byte client data hash, different for each `tag`.
fn client_data_hash(tag: u8) -> String {
    base64(
        &(0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(tag))
            .collect::<Vec<_>>(),
    )
}

/// The interpreter with python-fido2: `$CHROMECARD_PY_FIDO2`, else the venv under target/.
fn py_fido2() -> PathBuf {
    let python = match std::env::var_os("CHROMECARD_PY_FIDO2") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root()
            .join("target")
            .join("py-fido2")
            .join("bin")
            .join("python"),
    };
    assert!(
        python.exists(),
        "python-fido2's interpreter {} is missing: run scripts/py-fido2-venv.sh \
         (needs python3-venv and PyPI), or point CHROMECARD_PY_FIDO2 at a python that \
         has fido2 1.x installed",
        python.display()
    );
    python
}

/// Runs e2e/tests/interop/python_fido2.py in `mode` against `key`; asserts it passed and
/// returns its output (one PASS line per check).
fn python_fido2(mode: &str, key: &Key) -> String {
    let python = py_fido2();
    let script = workspace_root()
        .join("e2e")
        .join("tests")
        .join("interop")
        .join("python_fido2.py");
    let out = client(
        &s(&python),
        &[&s(&script), mode, key.path()],
        PYTHON_TIMEOUT,
    );
    let report = format!(
        "python-fido2 ({mode}) {:?}\nstdout:\n{}\nstderr:\n{}\nthe key's log:\n{}",
        out.status,
        out.stdout,
        out.stderr,
        key.vkey.log()
    );
    assert!(
        out.status.is_some_and(|st| st.success()),
        "python-fido2 checks failed: {report}"
    );
    assert!(
        out.stdout.contains(" 0 failed") && !out.stdout.contains("FAIL "),
        "{report}"
    );
    out.stdout
}

// ---------------------------------------------------------------------------
// libfido2 (fido2-token, fido2-cred, fido2-assert)
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn libfido2_lists_the_key_and_reads_a_ctap_2_1_getinfo() {
    let key = Key::start(&[]);
    let list = client_ok("fido2-token", &["-L"]);
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{}:", key.path())))
        .unwrap_or_else(|| {
            panic!(
                "fido2-token -L does not list {}:\n{}",
                key.path(),
                list.stdout
            )
        });
    assert!(
        line.contains("vendor=0x1209, product=0xcc01"),
        "fido2-token -L: {line}"
    );

    let info = client_ok("fido2-token", &["-I", key.path()]).stdout;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("fido2-token -I has no `{name}:` line:\n{info}"))
            .to_string()
    };
    assert_eq!(field("proto"), "0x02", "{info}");
    // CTAPHID capabilities: WINK and CBOR, and no CTAP1/U2F (NMSG).
    assert_eq!(field("caps"), "0x0d (wink, cbor, nomsg)", "{info}");
    assert_eq!(field("version strings"), "FIDO_2_0, FIDO_2_1", "{info}");
    assert_eq!(field("algorithms"), "es256 (public-key)", "{info}");
    assert_eq!(field("transport strings"), "usb", "{info}");
    // As a CTAP 2.1 key without a PIN reports them (a YubiKey 5 says the same).
    let options = field("options");
    for option in [
        "nork",
        "up",
        "noplat",
        "noalwaysUv",
        "noclientPin",
        "pinUvAuthToken",
        "makeCredUvNotRqd",
    ] {
        assert!(
            options.split(", ").any(|o| o == option),
            "{option} not in {options}"
        );
    }
    assert_eq!(field("maxmsgsiz"), "1200", "{info}");
    assert_eq!(field("aaguid").len(), 32, "{info}");
    // No PIN is set yet; getPINRetries answers the 8 tries a new PIN will have.
    assert_eq!(field("pin retries"), "8", "{info}");
    assert!(info.contains("pin protocols: 2, 1"), "{info}");
    let log = key.vkey.log();
    assert!(log.contains("<- CTAPHID_INIT"), "{log}");
    assert!(log.contains("authenticatorGetInfo"), "{log}");
    assert!(log.contains("authenticatorClientPIN"), "{log}");
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn libfido2_makes_and_verifies_a_credential_then_an_assertion_and_refuses_a_foreign_one() {
    let key = Key::start(&[]);
    let rp = "interop.example";

    // makeCredential: fido2-cred -M, then libfido2's own check of the self-attestation.
    let cred_in = key.file(
        "cred.in",
        &[&client_data_hash(1), rp, "alice", &base64(b"user-0001")],
    );
    let cred_out = key.tmp("cred.out");
    client_ok(
        "fido2-cred",
        &["-M", "-i", &cred_in, "-o", &cred_out, key.path()],
    );
    let made = fs::read_to_string(&cred_out).expect("fido2-cred -M output");
    let lines: Vec<&str> = made.lines().collect();
    assert!(lines.len() >= 6, "fido2-cred -M wrote:\n{made}");
    assert_eq!(lines[0], client_data_hash(1), "{made}");
    assert_eq!(lines[1], rp, "{made}");
    assert_eq!(lines[2], "packed", "fmt: {made}");
    // Self-attestation: no attestation certificate (x5c) follows the signature.
    assert_eq!(lines.len(), 6, "a 7th line (x5c) in:\n{made}");
    let cred_id = lines[4].to_string();

    let pubkey = key.tmp("cred.pub");
    let verified = client_ok("fido2-cred", &["-V", "-i", &cred_out, "-o", &pubkey]);
    let pem = fs::read_to_string(&pubkey).expect("fido2-cred -V output");
    assert!(
        pem.starts_with(&format!("{cred_id}\n-----BEGIN PUBLIC KEY-----")),
        "fido2-cred -V wrote:\n{pem}\nstderr: {}",
        verified.stderr
    );
    // A tampered clientDataHash does not verify: libfido2 really checks the signature.
    let mut tampered = lines.clone();
    let other_hash = client_data_hash(99);
    tampered[0] = &other_hash;
    let tampered_in = key.file("cred.tampered", &tampered);
    client_refused(
        "fido2-cred",
        &["-V", "-i", &tampered_in],
        "fido_cred_verify",
    );

    // getAssertion with that credential (user presence asked and checked), verified with
    // the credential's public key.
    let assert_in = key.file("assert.in", &[&client_data_hash(2), rp, &cred_id]);
    let assert_out = key.tmp("assert.out");
    client_ok(
        "fido2-assert",
        &["-G", "-p", "-i", &assert_in, "-o", &assert_out, key.path()],
    );
    let got = fs::read_to_string(&assert_out).expect("fido2-assert -G output");
    let lines: Vec<&str> = got.lines().collect();
    assert!(lines.len() >= 4, "fido2-assert -G wrote:\n{got}");
    assert_eq!(lines[0], client_data_hash(2), "{got}");
    assert_eq!(lines[1], rp, "{got}");
    client_ok(
        "fido2-assert",
        &["-V", "-p", "-i", &assert_out, &pubkey, "es256"],
    );
    let mut tampered = lines.clone();
    tampered[0] = &other_hash;
    let tampered_in = key.file("assert.tampered", &tampered);
    client_refused(
        "fido2-assert",
        &["-V", "-i", &tampered_in, &pubkey, "es256"],
        "fido_assert_verify",
    );
    // A second assertion verifies as well (its counter moved on: libfido2 does not
    // check counters, the signature covers them).
    let again_out = key.tmp("assert2.out");
    client_ok(
        "fido2-assert",
        &["-G", "-p", "-i", &assert_in, "-o", &again_out, key.path()],
    );
    client_ok(
        "fido2-assert",
        &["-V", "-p", "-i", &again_out, &pubkey, "es256"],
    );

    // A credential id this key does not hold: no assertion.
    let foreign = base64(&[0x5a; 64]);
    let foreign_in = key.file("foreign.in", &[&client_data_hash(3), rp, &foreign]);
    client_refused(
        "fido2-assert",
        &["-G", "-i", &foreign_in, key.path()],
        "FIDO_ERR_NO_CREDENTIALS",
    );
    // Its own credential under another relying party: no assertion either.
    let other_rp_in = key.file(
        "other-rp.in",
        &[&client_data_hash(4), "other.example", &cred_id],
    );
    client_refused(
        "fido2-assert",
        &["-G", "-i", &other_rp_in, key.path()],
        "FIDO_ERR_NO_CREDENTIALS",
    );

    let log = key.vkey.log();
    assert_eq!(
        log.matches("authenticatorMakeCredential").count(),
        1,
        "{log}"
    );
    assert!(log.contains("authenticatorGetAssertion"), "{log}");
    assert!(log.contains("CTAP2 answer status=0x2e"), "{log}");
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn libfido2_sees_a_ctap_2_0_key_as_fido_2_0_only() {
    let key = Key::start(&["--ctap20"]);
    let info = client_ok("fido2-token", &["-I", key.path()]).stdout;
    let versions = info
        .lines()
        .find_map(|l| l.strip_prefix("version strings: "))
        .unwrap_or_else(|| panic!("no version strings:\n{info}"));
    assert_eq!(versions, "FIDO_2_0", "{info}");
    assert!(info.contains("algorithms: es256 (public-key)"), "{info}");

    // ... and libfido2 still makes a credential with it.
    let cred_in = key.file(
        "cred.in",
        &[
            &client_data_hash(5),
            "ctap20.example",
            "carol",
            &base64(b"user-0003"),
        ],
    );
    let cred_out = key.tmp("cred.out");
    client_ok(
        "fido2-cred",
        &["-M", "-i", &cred_in, "-o", &cred_out, key.path()],
    );
    client_ok("fido2-cred", &["-V", "-i", &cred_out]);
}

// ---------------------------------------------------------------------------
// python-fido2
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn python_fido2_finds_the_key_and_registers_and_authenticates_with_it() {
    // Touches come late enough that keep-alives with UPNEEDED go out first.
    let key = Key::start(&["--touch-after-ms", "500"]);
    let out = python_fido2("ctap2", &key);
    for check in [
        "PASS a channel per client",
        "PASS list_devices finds the key",
        "PASS CTAPHID_PING 1000 bytes",
        "PASS CTAPHID_WINK",
        "PASS Ctap2(dev) (strict canonical CBOR)",
        "PASS authenticatorGetInfo",
        "PASS authenticatorMakeCredential + packed self-attestation verified",
        "PASS authenticatorGetAssertion verified with the attested COSE key",
        "PASS refusals",
        "PASS WebAuthn ceremony: Fido2Client + Fido2Server",
    ] {
        assert!(out.contains(check), "missing `{check}` in:\n{out}");
    }
    let log = key.vkey.log();
    assert!(log.contains("<- CTAPHID_PING"), "{log}");
    assert!(log.contains("<- CTAPHID_WINK"), "{log}");
    assert!(!log.contains("CTAPHID_ERROR"), "{log}");
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn python_fido2_cancels_a_touch_wait_with_ctaphid_cancel() {
    let key = Key::start(&["--no-touch"]);
    let out = python_fido2("cancel", &key);
    for check in [
        "PASS makeCredential cancelled by event: KEEPALIVE_CANCEL after UPNEEDED",
        "PASS the key answers after a cancel",
        "PASS authenticatorSelection cancelled by event: KEEPALIVE_CANCEL",
    ] {
        assert!(out.contains(check), "missing `{check}` in:\n{out}");
    }
    let log = key.vkey.log();
    assert!(
        log.matches("<- CTAPHID_CANCEL").count() >= 2,
        "the key should log python-fido2's CTAPHID_CANCELs:\n{log}"
    );
    assert_eq!(log.matches("CTAP2 answer status=0x2d").count(), 2, "{log}");
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn python_fido2_client_pin_sets_the_pin_and_gets_uv_with_protocols_1_and_2() {
    let key = Key::start(&[]);
    let out = python_fido2("pin", &key);
    for check in [
        "PASS setPIN (protocol 2), getPINRetries",
        "PASS protocol 2: token with permissions, makeCredential and getAssertion with UV",
        "PASS protocol 1: token with permissions, makeCredential and getAssertion with UV",
        "PASS protocol 1: getPinToken (legacy), makeCredential and getAssertion with UV, the token spent by the first",
        "PASS a token bound to another rpId is refused",
        "PASS protocol 2: a wrong PIN costs one retry, the right one restores them",
        "PASS protocol 1: a wrong PIN costs one retry, the right one restores them",
        "PASS changePIN (protocol 1)",
    ] {
        assert!(out.contains(check), "missing `{check}` in:\n{out}");
    }
    // The key keeps the PIN's hash, never the PIN.
    let kept = fs::read_to_string(key.dir.path().join("vkey.key")).unwrap();
    assert!(
        kept.contains("pin_hash ") && !kept.contains("12345678"),
        "{kept}"
    );
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM (scripts/vm-run.sh)"]
fn libfido2_asserts_with_the_pin_and_reports_uv() {
    let key = Key::start(&["--pin", "4711"]);
    let rp = "interop.example";
    // libfido2's tools read the PIN with readpassphrase(3), which reads stdin when there
    // is no terminal, as here.
    let with_pin = |program: &str, args: &[&str]| {
        let ran = run(
            std::process::Command::new(program).args(args),
            Some(b"4711\n"),
            CLIENT_TIMEOUT,
        );
        assert!(
            ran.status.is_some_and(|s| s.success()),
            "{program} {args:?}: {ran:?}\nthe key's log:\n{}",
            key.vkey.log()
        );
        ran
    };
    let cred_in = key.file(
        "cred.in",
        &[&client_data_hash(1), rp, "alice", &base64(b"user-0001")],
    );
    let cred_out = key.tmp("cred.out");
    with_pin(
        "fido2-cred",
        &["-M", "-i", &cred_in, "-o", &cred_out, key.path()],
    );
    let made = fs::read_to_string(&cred_out).unwrap();
    let lines: Vec<&str> = made.lines().collect();
    assert!(lines.len() >= 6, "fido2-cred -M wrote:\n{made}");
    let cred_id = lines[4].to_string();
    let pubkey = key.tmp("cred.pub");
    client_ok("fido2-cred", &["-V", "-i", &cred_out, "-o", &pubkey]);
    let assert_in = key.file("assert.in", &[&client_data_hash(2), rp, &cred_id]);
    let assert_out = key.tmp("assert.out");
    // -v: user verification, with the PIN (clientPIN, then getAssertion's pinUvAuthParam).
    with_pin(
        "fido2-assert",
        &["-G", "-v", "-i", &assert_in, "-o", &assert_out, key.path()],
    );
    // libfido2 verifies the signature and that UV is set in the signed data (-v).
    client_ok(
        "fido2-assert",
        &["-V", "-v", "-i", &assert_out, &pubkey, "es256"],
    );
    let log = key.vkey.log();
    assert!(log.contains("checking the pinUvAuthParam"), "{log}");
}

#[test]
fn base64_matches_rfc_4648() {
    for (plain, encoded) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (&[0xfb, 0xff], "+/8="),
    ] {
        assert_eq!(base64(plain), encoded);
    }
}
