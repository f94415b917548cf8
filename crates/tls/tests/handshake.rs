//! Real in-memory TLS handshakes between configurations built by this crate from
//! certificates made by `tls/make-certs.sh`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chromecard_tls::{make_client_config, make_server_config, ClientAuth};
use common::{foreign, handshake, ours, Refused};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, Error};

fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_owned()).expect("valid server name")
}

fn localhost_ip() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

/// k_server's listener as k_server builds it: its own certificate, client certificates
/// required and verified against our chain CA only.
fn k_server_config() -> Arc<rustls::ServerConfig> {
    let set = ours();
    make_server_config(
        &set.server_crt(),
        &set.server_key(),
        &ClientAuth::Required { ca_file: set.ca() },
    )
    .expect("k_server config")
}

/// k_proxy's upstream client as k_proxy builds it: trusts our CA, presents k_proxy.crt.
fn k_proxy_upstream_config() -> Arc<rustls::ClientConfig> {
    let set = ours();
    make_client_config(&set.ca(), Some((&set.proxy_crt(), &set.proxy_key())))
        .expect("k_proxy upstream config")
}

#[test]
fn mutual_tls_k_proxy_to_k_server_succeeds() {
    for server_name in [name("k_server"), name("localhost"), localhost_ip()] {
        let (client, server) = handshake(k_proxy_upstream_config(), k_server_config(), server_name)
            .expect("k_proxy with its certificate is accepted by k_server");
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
        // k_server sees exactly k_proxy's certificate as the peer.
        let presented = server.peer_certificates().expect("client certificate seen");
        let expected = chromecard_tls::load_certs(&ours().proxy_crt()).unwrap();
        assert_eq!(presented[0], expected[0]);
    }
}

#[test]
fn client_without_certificate_is_refused_by_k_server() {
    let client = make_client_config(&ours().ca(), None).unwrap();
    match handshake(client, k_server_config(), name("k_server")) {
        Err(Refused::Server(Error::NoCertificatesPresented)) => {}
        other => panic!("expected the server to demand a certificate, got {other:?}"),
    }
}

#[test]
fn client_certificate_from_foreign_ca_is_refused() {
    let f = foreign();
    // Trusts our CA (so it would accept k_server) but presents a foreign k_proxy certificate.
    let client = make_client_config(&ours().ca(), Some((&f.proxy_crt(), &f.proxy_key()))).unwrap();
    match handshake(client, k_server_config(), name("k_server")) {
        // Both CAs are named "CN=chromecard chain CA", so webpki finds our anchor by name
        // and then the signature does not verify: BadSignature rather than UnknownIssuer.
        Err(Refused::Server(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ))) => {}
        other => panic!("expected the server to refuse the foreign certificate, got {other:?}"),
    }
}

#[test]
fn client_trusting_only_foreign_ca_refuses_our_k_server() {
    let f = foreign();
    let client = make_client_config(&f.ca(), Some((&f.proxy_crt(), &f.proxy_key()))).unwrap();
    match handshake(client, k_server_config(), name("k_server")) {
        Err(Refused::Client(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ))) => {}
        other => panic!("expected the client to refuse our k_server, got {other:?}"),
    }
}

#[test]
fn wrong_server_name_is_refused() {
    match handshake(
        k_proxy_upstream_config(),
        k_server_config(),
        name("k_proxy"),
    ) {
        Err(Refused::Client(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ))) => {}
        other => panic!("expected NotValidForName on the client, got {other:?}"),
    }
}

#[test]
fn k_server_certificate_used_as_client_certificate_is_refused() {
    let set = ours();
    // Same CA, valid chain, but k_server.crt carries only the serverAuth EKU.
    let client =
        make_client_config(&set.ca(), Some((&set.server_crt(), &set.server_key()))).unwrap();
    match handshake(client, k_server_config(), name("k_server")) {
        Err(Refused::Server(Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ))) => {}
        other => panic!("expected InvalidPurpose on the server, got {other:?}"),
    }
}

#[test]
fn k_proxy_listener_without_client_auth_serves_plain_clients() {
    let set = ours();
    let server = make_server_config(&set.proxy_crt(), &set.proxy_key(), &ClientAuth::None).unwrap();
    for server_name in [name("k_proxy"), name("localhost"), localhost_ip()] {
        let client = make_client_config(&set.ca(), None).unwrap();
        let (_, server_conn) =
            handshake(client, server.clone(), server_name).expect("curl-like client accepted");
        assert!(server_conn.peer_certificates().is_none());
    }
}

#[test]
fn tls12_only_client_is_refused() {
    let mut roots = rustls::RootCertStore::empty();
    for cert in chromecard_tls::load_certs(&ours().ca()).unwrap() {
        roots.add(cert).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let set = ours();
    let server = make_server_config(&set.proxy_crt(), &set.proxy_key(), &ClientAuth::None).unwrap();
    assert!(handshake(Arc::new(client), server, name("k_proxy")).is_err());
}

#[test]
fn extra_san_names_from_the_script_are_usable() {
    let dir = common::tempdir();
    let set = common::generate(
        dir.path(),
        &["--san", "my-proxy-qube", "--san", "10.137.0.5"],
    );
    let server = make_server_config(
        &set.server_crt(),
        &set.server_key(),
        &ClientAuth::Required { ca_file: set.ca() },
    )
    .unwrap();
    let ip = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 137, 0, 5)).into());
    for server_name in [name("my-proxy-qube"), ip, name("k_server")] {
        let client =
            make_client_config(&set.ca(), Some((&set.proxy_crt(), &set.proxy_key()))).unwrap();
        handshake(client, server.clone(), server_name).expect("extra SAN accepted");
    }
}
