//! Certificate validity checks at start-up, with the clock passed in rather than waited for.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chromecard_tls::{check_certificate_file, TlsError, EXPIRY_WARNING_DAYS};

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn fresh_certificates_pass_with_subject_and_days_left() {
    let set = common::ours();
    let statuses =
        check_certificate_file("--tls-certfile", &set.server_crt(), SystemTime::now()).unwrap();
    assert_eq!(statuses.len(), 1);
    assert!(
        statuses[0].subject.contains("k_server"),
        "{:?}",
        statuses[0]
    );
    // make-certs.sh issues leaf certificates for 825 days.
    assert!(
        (800..=825).contains(&statuses[0].days_left),
        "{:?}",
        statuses[0]
    );
}

#[test]
fn an_expired_certificate_is_refused_naming_the_file() {
    let set = common::ours();
    let not_after = check_certificate_file("--tls-certfile", &set.server_crt(), SystemTime::now())
        .unwrap()[0]
        .not_after;
    let err =
        check_certificate_file("--tls-certfile", &set.server_crt(), not_after + DAY).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&set.server_crt().display().to_string()),
        "{text}"
    );
    assert!(text.contains("expired"), "{text}");
}

#[test]
fn days_left_counts_down_to_the_warning_window() {
    let set = common::ours();
    let not_after = check_certificate_file("--server-ca-file", &set.ca(), SystemTime::now())
        .unwrap()[0]
        .not_after;
    let soon = not_after - DAY * (EXPIRY_WARNING_DAYS as u32 - 1) - Duration::from_secs(60);
    let statuses = check_certificate_file("--server-ca-file", &set.ca(), soon).unwrap();
    assert_eq!(statuses[0].days_left, EXPIRY_WARNING_DAYS - 1);
}

#[test]
fn a_certificate_from_the_future_is_refused() {
    let set = common::ours();
    let err =
        check_certificate_file("--tls-certfile", &set.proxy_crt(), UNIX_EPOCH + DAY).unwrap_err();
    assert!(matches!(err, TlsError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn certificate_names_are_the_leaf_subject_alt_names() {
    use chromecard_tls::{certificate_names, SubjectName};
    let set = common::ours();
    let names = certificate_names(&set.server_crt()).unwrap();
    // make-certs.sh: the CN as a DNS name, localhost, and 127.0.0.1.
    assert!(
        names.contains(&SubjectName::Dns("k_server".into())),
        "{names:?}"
    );
    assert!(
        names.contains(&SubjectName::Dns("localhost".into())),
        "{names:?}"
    );
    assert!(
        names.contains(&SubjectName::Ip(std::net::Ipv4Addr::LOCALHOST.into())),
        "{names:?}"
    );
    // The CA has no subjectAltName at all.
    assert_eq!(certificate_names(&set.ca()).unwrap(), Vec::new());
}
