//! Every loading mistake an operator can make yields a `TlsError` naming the file.

mod common;

use std::path::Path;

use chromecard_tls::{
    ca_summary, fingerprint_sha256, load_certs, load_private_key, make_client_config,
    make_server_config, ClientAuth, TlsError,
};
use common::ours;

fn assert_names(err: &TlsError, path: &Path) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "error message should name {}: {message}",
        path.display()
    );
}

#[test]
fn missing_key_file_names_the_path() {
    let set = ours();
    let missing = set.path("no-such.key");
    let err = load_private_key(&missing).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert_names(&err, &missing);

    let err = make_server_config(&set.server_crt(), &missing, &ClientAuth::None).unwrap_err();
    assert_names(&err, &missing);
}

#[test]
fn missing_cert_file_names_the_path() {
    let set = ours();
    let missing = set.path("no-such.crt");
    let err = make_server_config(&missing, &set.server_key(), &ClientAuth::None).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert_names(&err, &missing);
}

#[test]
fn empty_cert_file_names_the_path() {
    let dir = common::tempdir();
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let err = load_certs(&empty).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_names(&err, &empty);

    let err = make_server_config(&empty, &ours().server_key(), &ClientAuth::None).unwrap_err();
    assert_names(&err, &empty);
}

#[test]
fn empty_ca_file_names_the_path() {
    let dir = common::tempdir();
    let empty = dir.path().join("empty-ca.crt");
    std::fs::write(&empty, "").unwrap();
    let set = ours();

    let err = make_client_config(&empty, None).unwrap_err();
    assert_names(&err, &empty);

    let err = make_server_config(
        &set.server_crt(),
        &set.server_key(),
        &ClientAuth::Required {
            ca_file: empty.clone(),
        },
    )
    .unwrap_err();
    assert_names(&err, &empty);
}

#[test]
fn leaf_certificate_given_as_ca_is_refused() {
    let set = ours();
    let leaf = set.server_crt();
    let err = make_client_config(&leaf, None).unwrap_err();
    assert!(matches!(err, TlsError::NotACa { index: 1, .. }), "{err:?}");
    assert_names(&err, &leaf);

    let err = make_server_config(
        &set.server_crt(),
        &set.server_key(),
        &ClientAuth::Required {
            ca_file: set.proxy_crt(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::NotACa { .. }), "{err:?}");
    assert_names(&err, &set.proxy_crt());
}

#[test]
fn mismatched_key_names_both_paths() {
    let set = ours();
    let (cert, key) = (set.server_crt(), set.proxy_key());
    let err = make_server_config(&cert, &key, &ClientAuth::None).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert_names(&err, &cert);
    assert_names(&err, &key);

    let (cert, key) = (set.proxy_crt(), set.server_key());
    let err = make_client_config(&set.ca(), Some((&cert, &key))).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert_names(&err, &cert);
    assert_names(&err, &key);
}

#[test]
fn swapped_cert_and_key_get_a_hint() {
    let set = ours();
    let err = load_certs(&set.server_key()).unwrap_err();
    assert!(err.to_string().contains("swapped"), "{err}");
    assert_names(&err, &set.server_key());

    let err = load_private_key(&set.server_crt()).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("swapped"), "{err}");
}

#[test]
fn corrupt_key_error_never_echoes_the_file() {
    let dir = common::tempdir();
    let bad = dir.path().join("bad.key");
    let secret_looking = "SECRETSECRETSECRET!!!";
    std::fs::write(
        &bad,
        format!("-----BEGIN PRIVATE KEY-----\n{secret_looking}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let err = load_private_key(&bad).unwrap_err();
    let message = format!("{err} {err:?}");
    assert!(!message.contains("SECRET"), "{message}");
    assert_names(&err, &bad);
}

#[cfg(unix)]
#[test]
fn readable_key_file_warns_private_one_does_not() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = common::tempdir();
    let key = dir.path().join("k.key");
    std::fs::copy(ours().server_key(), &key).unwrap();

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (result, warnings) = common::count_warnings(|| load_private_key(&key));
    assert!(result.is_ok());
    assert_eq!(warnings, 0);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (result, warnings) = common::count_warnings(|| load_private_key(&key));
    assert!(result.is_ok(), "a readable key still loads");
    assert_eq!(warnings, 1);
}

#[test]
fn ca_summary_matches_openssl_fingerprint() {
    let ca = ours().ca();
    let summary = ca_summary(&ca).unwrap();
    let fp = fingerprint_sha256(&load_certs(&ca).unwrap()[0]);
    assert_eq!(
        summary,
        format!("{} (1 certificate, sha256 {fp})", ca.display())
    );

    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&ca)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let openssl_fp = text.trim().rsplit('=').next().unwrap();
    assert_eq!(fp, openssl_fp);
}
