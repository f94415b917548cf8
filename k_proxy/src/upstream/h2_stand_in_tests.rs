//! HTTP/2 on the hop against a stand-in k_server. The retry rules: a stream refused with
//! `REFUSED_STREAM` was never processed and is sent once more (over HTTP/1.1, on a new
//! connection), whatever its method; a stream reset with another code may have been
//! processed, so a POST is not sent again. And the re-ask: after k_server declined
//! HTTP/2, k_proxy forwards over HTTP/1.1 without offering it again until
//! `ASK_AGAIN_FOR_H2` has passed, then takes HTTP/2 once k_server offers it; after an
//! HTTP/2 connect that failed, requests go over HTTP/1.1 for `AFTER_FAILED_CONNECT`
//! rather than each waiting on another connect.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chromecard_hop::ProxyToken;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::pool::{AFTER_FAILED_CONNECT, ASK_AGAIN_FOR_H2};
use super::{Upstream, UpstreamHttp2, UpstreamSettings};

/// What the stand-in was asked, by protocol.
#[derive(Default)]
struct Seen {
    /// TLS handshakes whose client offered `h2`, completed or not.
    h2_offers: AtomicUsize,
    tls_handshakes: AtomicUsize,
    h2_streams: AtomicUsize,
    h1_requests: AtomicUsize,
}

/// How the stand-in answers HTTP/2 streams.
#[derive(Clone, Copy)]
enum OnStream {
    Reset(h2::Reason),
    Answer,
}

/// What the stand-in does with a client that offers `h2`; a test may change it.
#[derive(Default)]
struct H2Offer {
    /// Offer `h2` too (otherwise only `http/1.1`, as a k_server started with `--no-http2`).
    offered: AtomicBool,
    /// Close the connection before the handshake ends (a failed connect).
    dropped: AtomicBool,
}

impl H2Offer {
    fn offered() -> Arc<Self> {
        let offer = Self::default();
        offer.offered.store(true, Ordering::SeqCst);
        Arc::new(offer)
    }
}

/// A TLS k_server stand-in on a free port: it treats a client offering `h2` as `h2`
/// says, every HTTP/2 stream as `on_stream` says, and answers every HTTP/1.1 request
/// 200. Returns its port, the certificate to trust and what it saw.
async fn stand_in(
    on_stream: OnStream,
    h2: Arc<H2Offer>,
) -> (u16, rustls::pki_types::CertificateDer<'static>, Arc<Seen>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config_offering = |alpn: &[&[u8]]| {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Arc::new(config)
    };
    let with_h2 = config_offering(&[b"h2", b"http/1.1"]);
    let without_h2 = config_offering(&[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (with_h2, without_h2, h2) = (with_h2.clone(), without_h2.clone(), h2.clone());
            let seen = counts.clone();
            tokio::spawn(async move {
                let acceptor = rustls::server::Acceptor::default();
                let Ok(start) = tokio_rustls::LazyConfigAcceptor::new(acceptor, tcp).await else {
                    return;
                };
                let client_offers_h2 = start
                    .client_hello()
                    .alpn()
                    .is_some_and(|mut offered| offered.any(|protocol| protocol == b"h2"));
                if client_offers_h2 {
                    seen.h2_offers.fetch_add(1, Ordering::SeqCst);
                    if h2.dropped.load(Ordering::SeqCst) {
                        return;
                    }
                }
                let config = if h2.offered.load(Ordering::SeqCst) {
                    with_h2
                } else {
                    without_h2
                };
                let Ok(tls) = start.into_stream(config).await else {
                    return;
                };
                seen.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let Ok(mut connection) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        seen.h2_streams.fetch_add(1, Ordering::SeqCst);
                        match on_stream {
                            OnStream::Reset(reason) => respond.send_reset(reason),
                            OnStream::Answer => {
                                let _ = respond.send_response(Response::new(()), true);
                            }
                        }
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

/// A stand-in that offers HTTP/2 and resets every stream with `reason`.
async fn resetting(
    reason: h2::Reason,
) -> (u16, rustls::pki_types::CertificateDer<'static>, Arc<Seen>) {
    stand_in(OnStream::Reset(reason), H2Offer::offered()).await
}

/// Moves tokio's clock on by `by`, as if that much time had passed.
async fn let_pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
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

async fn send(upstream: &Upstream, method: Method) -> Result<StatusCode, String> {
    upstream
        .forward(
            method,
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
    let (port, cert, seen) = resetting(h2::Reason::REFUSED_STREAM).await;
    let upstream = upstream_to(port, cert);
    assert_eq!(send(&upstream, Method::POST).await, Ok(StatusCode::OK));
    assert_eq!(seen.h2_streams.load(Ordering::SeqCst), 1);
    assert_eq!(seen.h1_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_post_whose_stream_was_reset_otherwise_is_not_sent_again() {
    let (port, cert, seen) = resetting(h2::Reason::INTERNAL_ERROR).await;
    let upstream = upstream_to(port, cert);
    assert_eq!(
        send(&upstream, Method::POST).await,
        Err("502 Bad Gateway upstream_unavailable".into())
    );
    assert_eq!(seen.h2_streams.load(Ordering::SeqCst), 1);
    assert_eq!(seen.h1_requests.load(Ordering::SeqCst), 0);
}

/// One GET through `upstream`, answered 200; then what the stand-in has seen in all:
/// (handshakes offering h2, TLS handshakes completed, HTTP/2 streams, HTTP/1.1 requests).
async fn get_then_tally(upstream: &Upstream, seen: &Seen) -> (usize, usize, usize, usize) {
    assert_eq!(send(upstream, Method::GET).await, Ok(StatusCode::OK));
    (
        seen.h2_offers.load(Ordering::SeqCst),
        seen.tls_handshakes.load(Ordering::SeqCst),
        seen.h2_streams.load(Ordering::SeqCst),
        seen.h1_requests.load(Ordering::SeqCst),
    )
}

#[tokio::test]
async fn after_k_server_declined_http2_it_is_offered_again_only_after_a_while() {
    let h2 = Arc::new(H2Offer::default());
    let (port, cert, seen) = stand_in(OnStream::Answer, h2.clone()).await;
    let upstream = upstream_to(port, cert);

    // Declined: this request goes over the HTTP/1.1 connection k_server chose.
    assert_eq!(get_then_tally(&upstream, &seen).await, (1, 1, 0, 1));

    // k_server offers HTTP/2 now, but k_proxy does not ask yet: the pooled HTTP/1.1
    // connection serves, and no new handshake is made.
    h2.offered.store(true, Ordering::SeqCst);
    assert_eq!(get_then_tally(&upstream, &seen).await, (1, 1, 0, 2));

    // Once the wait has passed, the next request asks again and gets HTTP/2, and the
    // one after keeps to that connection.
    let_pass(ASK_AGAIN_FOR_H2 + Duration::from_secs(1)).await;
    assert_eq!(get_then_tally(&upstream, &seen).await, (2, 2, 1, 2));
    assert_eq!(get_then_tally(&upstream, &seen).await, (2, 2, 2, 2));
}

#[tokio::test]
async fn after_a_failed_http2_connect_requests_go_over_http1_for_a_moment() {
    let h2 = H2Offer::offered();
    h2.dropped.store(true, Ordering::SeqCst);
    let (port, cert, seen) = stand_in(OnStream::Answer, h2.clone()).await;
    let upstream = upstream_to(port, cert);

    // The HTTP/2 connect fails: the request is not lost, it goes over HTTP/1.1.
    assert_eq!(get_then_tally(&upstream, &seen).await, (1, 1, 0, 1));

    // Right after, requests do not queue behind another connect: HTTP/1.1 at once.
    h2.dropped.store(false, Ordering::SeqCst);
    assert_eq!(get_then_tally(&upstream, &seen).await, (1, 1, 0, 2));

    // A moment later HTTP/2 is tried again, and now it connects.
    let_pass(AFTER_FAILED_CONNECT + Duration::from_millis(100)).await;
    assert_eq!(get_then_tally(&upstream, &seen).await, (2, 2, 1, 2));
}
