//! The retry rules on HTTP/2, against a stand-in k_server that resets streams: a stream
//! refused with `REFUSED_STREAM` was never processed and is sent once more (over
//! HTTP/1.1, on a new connection), whatever its method; a stream reset with another code
//! may have been processed, so a POST is not sent again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chromecard_hop::ProxyToken;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Upstream, UpstreamHttp2, UpstreamSettings};

/// What the stand-in was asked, by protocol.
#[derive(Default)]
struct Seen {
    h2_streams: AtomicUsize,
    h1_requests: AtomicUsize,
}

/// A TLS k_server stand-in on a free port that resets every HTTP/2 stream with `reset`
/// and answers every HTTP/1.1 request 200. Returns its port, the certificate to trust
/// and what it saw.
async fn stand_in(
    reset: h2::Reason,
) -> (u16, rustls::pki_types::CertificateDer<'static>, Arc<Seen>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = counts.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let Ok(mut connection) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        seen.h2_streams.fetch_add(1, Ordering::SeqCst);
                        respond.send_reset(reset);
                    }
                } else {
                    let service = service_fn(move |_request| {
                        seen.h1_requests.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"{\"counter\":1}"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    (port, cert, seen)
}

fn upstream_to(port: u16, cert: rustls::pki_types::CertificateDer<'static>) -> Upstream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Upstream::new(UpstreamSettings {
        base: format!("https://127.0.0.1:{port}").parse().unwrap(),
        tls: Some(Arc::new(tls)),
        server_name: "localhost".into(),
        proxy_token: ProxyToken::load(None, Some("t".repeat(32)), None).unwrap(),
        connect_timeout: Duration::from_secs(3),
        response_timeout: Duration::from_secs(5),
        connection_threads: 0,
        http2: UpstreamHttp2::Always,
    })
    .unwrap()
}

async fn post(upstream: &Upstream) -> Result<StatusCode, String> {
    upstream
        .forward(
            Method::POST,
            "/resource/counter",
            &HeaderMap::new(),
            Bytes::new(),
            "alice",
        )
        .await
        .map(|response| response.status())
        .map_err(|err| format!("{} {}", err.status, err.code))
}

#[tokio::test]
async fn a_post_refused_by_its_stream_is_sent_once_more_over_http1() {
    let (port, cert, seen) = stand_in(h2::Reason::REFUSED_STREAM).await;
    let upstream = upstream_to(port, cert);
    assert_eq!(post(&upstream).await, Ok(StatusCode::OK));
    assert_eq!(seen.h2_streams.load(Ordering::SeqCst), 1);
    assert_eq!(seen.h1_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_post_whose_stream_was_reset_otherwise_is_not_sent_again() {
    let (port, cert, seen) = stand_in(h2::Reason::INTERNAL_ERROR).await;
    let upstream = upstream_to(port, cert);
    assert_eq!(
        post(&upstream).await,
        Err("502 Bad Gateway upstream_unavailable".into())
    );
    assert_eq!(seen.h2_streams.load(Ordering::SeqCst), 1);
    assert_eq!(seen.h1_requests.load(Ordering::SeqCst), 0);
}
