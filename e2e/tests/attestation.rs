//! Attested enrolment end to end, with the real k_proxy binary and the software
//! authenticator given an attestation identity that this test makes (rcgen):
//! `k_proxy enroll --attestation-roots` (and `--mds-blob`/`--mds-root`) accept a chain
//! to the given root and refuse a foreign one and self attestation; `--require-attested`
//! refuses logins with credentials that were not attested (401 not_attested) and fails
//! closed when the attestation records cannot be read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chromecard_e2e::*;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair};

/// The software authenticator's AAGUID.
const SOFT_AAGUID: &[u8; 16] = b"chromecard-soft!";

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
    der: Vec<u8>,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2090, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        params,
        key,
    }
}

/// A packed-style attestation certificate issued by `ca`: (key PEM, cert PEM, cert DER).
fn leaf(ca: &Ca, aaguid: bool) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    for (t, v) in [
        (DnType::CountryName, "SE"),
        (DnType::OrganizationName, "Chromecard Test Keys"),
        (DnType::OrganizationalUnitName, "Authenticator Attestation"),
        (DnType::CommonName, "Chromecard Test Attestation"),
    ] {
        params.distinguished_name.push(t, v);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = rcgen::date_time_ymd(2021, 1, 1);
    params.not_after = rcgen::date_time_ymd(2089, 1, 1);
    if aaguid {
        let mut content = vec![0x04, 0x10];
        content.extend_from_slice(SOFT_AAGUID);
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 45724, 1, 1, 4],
                content,
            ));
    }
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca.params, &ca.key))
        .unwrap();
    (key.serialize_pem(), cert.pem(), cert.der().to_vec())
}

/// A private dir with the software key, the enrolment file and the test's PKI.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chromecard-attest-")
            .tempdir()
            .unwrap();
        Self { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        s(p)
    }
    fn flags(&self) -> Vec<String> {
        [
            "--gate",
            "soft",
            "--soft-key-file",
            &s(self.path("soft.key")),
            "--credentials-file",
            &s(self.path("credentials")),
            "--touch-timeout",
            "2",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    }
    fn k_proxy(&self, args: &[&str]) -> Exited {
        Spawn::k_proxy()
            .args(args)
            .args(self.flags())
            .run_to_exit(Duration::from_secs(20))
    }
}

fn assert_ok(e: &Exited) {
    assert!(matches!(e.status, Some(st) if st.success()), "{e:?}");
}

#[test]
fn attested_enrolment_and_require_attested_logins() {
    let f = Fixture::new();
    let root = ca("Chromecard E2E Attestation Root");
    let root_pem = f.write("root.pem", &root.pem);
    let foreign_pem = f.write("foreign.pem", &ca("Chromecard E2E Foreign Root").pem);
    let (key_pem, leaf_pem, _) = leaf(&root, true);
    let key = f.write("attestation.key", &key_pem);
    let chain = f.write("attestation.pem", &leaf_pem);
    let attesting = [
        "--soft-attestation-key",
        &key,
        "--soft-attestation-certs",
        &chain,
    ];

    // alice: a chain to the given root passes, and is recorded beside the enrolment file.
    let mut args = vec![
        "enroll",
        "--username",
        "alice",
        "--attestation-roots",
        &root_pem,
    ];
    args.extend(attesting);
    let e = f.k_proxy(&args);
    assert_ok(&e);
    assert!(
        e.stdout.contains(
            "attested: packed statement chains to \"CN=Chromecard E2E Attestation Root\""
        ),
        "{e:?}"
    );
    let side = f.path("credentials.attestation");
    let text = fs::read_to_string(&side).unwrap();
    let line = text.lines().find(|l| l.starts_with("alice:")).unwrap();
    // user:credential_id:aaguid:fmt:key_sha256:root subject
    let fields: Vec<&str> = line.splitn(6, ':').collect();
    assert_eq!(
        fields[2..4],
        ["6368726f6d65636172642d736f667421", "packed"],
        "{line}"
    );
    assert!(
        fields[4].len() == 64 && fields[4].bytes().all(|b| b.is_ascii_hexdigit()),
        "the record names the attested key by its SHA-256: {line}"
    );
    assert_eq!(fields[5], "CN=Chromecard E2E Attestation Root", "{line}");
    assert_eq!(
        fs::metadata(&side).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // pam-u2f's line format is untouched.
    let creds = fs::read_to_string(f.path("credentials")).unwrap();
    assert!(creds
        .lines()
        .any(|l| l.starts_with("alice:") && l.ends_with(",es256,+presence")));

    // carol: the same key, but only a foreign root is trusted.
    let mut args = vec![
        "enroll",
        "--username",
        "carol",
        "--attestation-roots",
        &foreign_pem,
    ];
    args.extend(attesting);
    f.k_proxy(&args)
        .assert_refused(&["attestation_untrusted_root", "Chromecard E2E Foreign Root"]);
    // dave: a software key without an identity sends self attestation.
    f.k_proxy(&[
        "enroll",
        "--username",
        "dave",
        "--attestation-roots",
        &root_pem,
    ])
    .assert_refused(&["self attestation", "attestation_self"]);
    // bob: enrolled the old way, not attested.
    assert_ok(&f.k_proxy(&["enroll", "--username", "bob"]));
    let creds = fs::read_to_string(f.path("credentials")).unwrap();
    assert!(
        !creds.contains("carol:") && !creds.contains("dave:"),
        "{creds}"
    );

    let listed = f.k_proxy(&["enroll", "list"]);
    assert!(
        listed.stdout.lines().any(|l| l.starts_with("alice\t")
            && l.ends_with("attested packed (CN=Chromecard E2E Attestation Root)")),
        "{listed:?}"
    );
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with("bob\t") && l.ends_with("not attested")),
        "{listed:?}"
    );

    // The server with --require-attested.
    let dead = free_port();
    let mut flags = f.flags();
    flags.push("--require-attested".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (mut p, _port, c) = start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &flags);
    c.login_ok("alice");
    let r = c.login("bob");
    r.expect_error(401, "not_attested");
    assert!(
        r.body.contains("--require-attested") && !r.body.contains("session_token"),
        "{}",
        r.body
    );
    // An unreadable side file refuses everyone (fail closed), attested or not.
    fs::write(&side, "not a record\n").unwrap();
    c.login("alice").expect_error(503, "credential_store_error");
    p.assert_running();
    drop(p);
    // ... and k_proxy refuses to start with it.
    let e = Spawn::k_proxy()
        .args([
            "--port",
            &free_port().to_string(),
            "--proxy-token",
            PROXY_TOKEN,
        ])
        .args(&flags)
        .run_to_exit(Duration::from_secs(15));
    e.assert_refused(&["--require-attested", "credentials.attestation"]);
    // `enroll remove` drops the removed credential's record.
    fs::write(&side, &text).unwrap();
    fs::set_permissions(&side, fs::Permissions::from_mode(0o600)).unwrap();
    assert_ok(&f.k_proxy(&["enroll", "remove", "--username", "alice"]));
    let after = fs::read_to_string(&side).unwrap();
    assert!(!after.contains("alice:"), "{after}");
}

/// The JWT a Metadata Service would publish, signed with `signer` (ES256).
fn mds_blob(
    signer_key_pem: &str,
    signer_der: &[u8],
    attestation_root: &Ca,
    status: &str,
) -> String {
    let h = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(signer_der)]})
            .to_string(),
    );
    let p = URL_SAFE_NO_PAD.encode(
        serde_json::json!({
            "legalHeader": "test", "no": 42, "nextUpdate": "2089-01-01",
            "entries": [{
                "aaguid": "6368726f-6d65-6361-7264-2d736f667421",
                "metadataStatement": {
                    "attestationRootCertificates": [STANDARD.encode(&attestation_root.der)]
                },
                "statusReports": [{"status": status, "effectiveDate": "2022-01-01"}]
            }]
        })
        .to_string(),
    );
    let sk = p256::ecdsa::SigningKey::from_pkcs8_pem(signer_key_pem).unwrap();
    let sig: p256::ecdsa::Signature = sk.sign(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[test]
fn enrolment_with_a_metadata_blob() {
    let f = Fixture::new();
    let root = ca("Chromecard E2E Attestation Root");
    let (key_pem, leaf_pem, _) = leaf(&root, true);
    let key = f.write("attestation.key", &key_pem);
    let chain = f.write("attestation.pem", &leaf_pem);
    let mds_root = ca("Chromecard E2E MDS Root");
    let (signer_key, _, signer_der) = leaf(&mds_root, false);
    let mds_root_pem = f.write("mds-root.pem", &mds_root.pem);
    let good = f.write(
        "good.jwt",
        &mds_blob(&signer_key, &signer_der, &root, "FIDO_CERTIFIED_L1"),
    );
    let revoked = f.write(
        "revoked.jwt",
        &mds_blob(&signer_key, &signer_der, &root, "REVOKED"),
    );
    let other_root_pem = f.write("other.pem", &ca("Not the MDS Root").pem);
    let enrol = |user: &str, blob: &str, mds_root: &str| {
        f.k_proxy(&[
            "enroll",
            "--username",
            user,
            "--mds-blob",
            blob,
            "--mds-root",
            mds_root,
            "--soft-attestation-key",
            &key,
            "--soft-attestation-certs",
            &chain,
        ])
    };
    // No --attestation-roots: the blob's entry for the AAGUID supplies the root.
    let e = enrol("alice", &good, &mds_root_pem);
    assert_ok(&e);
    assert!(e.stderr.contains("metadata blob no. 42"), "{e:?}");
    assert!(
        e.stdout.contains("CN=Chromecard E2E Attestation Root"),
        "{e:?}"
    );
    enrol("bob", &revoked, &mds_root_pem).assert_refused(&["REVOKED", "attestation_revoked"]);
    enrol("carol", &good, &other_root_pem).assert_refused(&[
        "--mds-blob",
        "--mds-root",
        "signature",
    ]);
}

#[test]
fn bad_attestation_flags_are_refused_naming_the_flag() {
    let f = Fixture::new();
    let missing = s(f.path("no-such-root.pem"));
    f.k_proxy(&["enroll", "--username", "a", "--attestation-roots", &missing])
        .assert_refused(&["--attestation-roots", "no-such-root.pem"]);
    let empty = f.write("empty.pem", "");
    f.k_proxy(&["enroll", "--username", "a", "--attestation-roots", &empty])
        .assert_refused(&["--attestation-roots", "no PEM certificate"]);
    let blob = f.write("blob.jwt", "x.y.z");
    f.k_proxy(&["enroll", "--username", "a", "--mds-blob", &blob])
        .assert_refused(&["--mds-root"]);
    let root = f.write("root.pem", &ca("r").pem);
    f.k_proxy(&[
        "enroll",
        "--username",
        "a",
        "--mds-blob",
        &blob,
        "--mds-root",
        &root,
    ])
    .assert_refused(&["--mds-blob", "the metadata blob is malformed"]);
    f.k_proxy(&["enroll", "--username", "a", "--soft-attestation-key", &root])
        .assert_refused(&["--soft-attestation-certs"]);
    let bad_key = f.write("bad.key", "not a key");
    f.k_proxy(&[
        "enroll",
        "--username",
        "a",
        "--soft-attestation-key",
        &bad_key,
        "--soft-attestation-certs",
        &root,
    ])
    .assert_refused(&["--soft-attestation-key", "PKCS#8"]);
    // --require-attested without an enrolment file, and a soft identity with the real key.
    Spawn::k_proxy()
        .args([
            "--gate",
            "soft",
            "--require-attested",
            "--proxy-token",
            PROXY_TOKEN,
        ])
        .run_to_exit(Duration::from_secs(15))
        .assert_refused(&["--require-attested", "--credentials-file"]);
    Spawn::k_proxy()
        .args([
            "enroll",
            "--username",
            "a",
            "--credentials-file",
            &s(f.path("c")),
            "--soft-attestation-key",
            &bad_key,
            "--soft-attestation-certs",
            &root,
        ])
        .run_to_exit(Duration::from_secs(15))
        .assert_refused(&["--soft-attestation-key", "--gate soft"]);
}
