//! A plain-HTTP request sent to a TLS port (the runbook's `http://` lines against a
//! k_proxy that serves TLS) is answered with a plain 400 that says to use `https://`,
//! instead of a failed handshake that curl shows as an empty reply.
//!
//! Decided on the first byte, without consuming it: a TLS connection starts with a
//! handshake record (0x16), an HTTP/1.x request with its method's capital letters.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::log_limit::OncePerSecond;

/// The whole answer: a fixed text, so nothing of the request is reflected.
const ANSWER_BODY: &str = r#"{"error":"tls_required","message":"This port speaks HTTPS only: send the request with https:// (with curl, give the chain CA with --cacert)."}"#;
/// How long the answer may take to leave, and the client to close after it.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Most of the request read (and discarded) before answering, so that closing does not
/// reset the connection with the request still unread (which loses the answer).
const MAX_REQUEST_READ: usize = 16 * 1024;

/// Whether the connection began with a plain-HTTP request, which was then answered (and
/// the connection closed): the caller stops there. Waits for the first byte at most
/// `wait`; a connection that sends nothing in that time is left to the handshake's own
/// bound, which then finds it already spent.
pub(crate) async fn answered(stream: &mut TcpStream, wait: Duration, peer: SocketAddr) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {}
        _ => return false,
    }
    static ANSWERED: OncePerSecond = OncePerSecond::new();
    if let Some(left_out) = ANSWERED.allow() {
        tracing::info!(%peer, left_out, "plain HTTP on the TLS port: answered 400 tls_required");
    }
    let _ = tokio::time::timeout(ANSWER_WAIT, answer(stream)).await;
    true
}

async fn answer(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut request = vec![0u8; MAX_REQUEST_READ];
    let mut read = 0;
    // Only the new bytes (and the three before them) are searched for the head's end: a
    // client sending a byte at a time must not make this quadratic.
    let mut searched = 0;
    while read < request.len() {
        let n = stream.read(&mut request[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        if request[searched..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        searched = read.saturating_sub(3);
    }
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        ANSWER_BODY.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(ANSWER_BODY.as_bytes()).await?;
    stream.shutdown().await?;
    // Until the client closes too, so that what it still sends does not reset the answer.
    while stream.read(&mut request).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    #[tokio::test]
    async fn a_plain_http_request_gets_a_400_that_names_https() {
        let (mut client, mut server, peer) = pair().await;
        client
            .write_all(b"POST /session/login HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let serving =
            tokio::spawn(async move { answered(&mut server, Duration::from_secs(1), peer).await });
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        drop(client);
        assert!(serving.await.unwrap());
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "tls_required");
    }

    /// A head sent a byte at a time is still found whole (its end spans reads).
    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_answered() {
        let (mut client, mut server, peer) = pair().await;
        let serving =
            tokio::spawn(async move { answered(&mut server, Duration::from_secs(1), peer).await });
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
            client.write_all(&[*byte]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        drop(client);
        assert!(serving.await.unwrap());
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    }

    #[tokio::test]
    async fn a_tls_client_hello_is_left_untouched_for_the_handshake() {
        let (mut client, mut server, peer) = pair().await;
        // The start of a TLS record: handshake (0x16), version 3.1.
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        assert!(!answered(&mut server, Duration::from_secs(1), peer).await);
        let mut peeked = [0u8; 3];
        server.read_exact(&mut peeked).await.unwrap();
        assert_eq!(
            peeked,
            [0x16, 0x03, 0x01],
            "the bytes are still there to read"
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_not_waited_for_beyond_the_bound() {
        let (_client, mut server, peer) = pair().await;
        let started = std::time::Instant::now();
        assert!(!answered(&mut server, Duration::from_millis(100), peer).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
