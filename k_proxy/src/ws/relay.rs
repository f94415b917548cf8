//! An admitted socket: the stream opened at k_server, the 101 to the browser, and the
//! relay between them until either side or the session ends.

use super::*;

/// Opens the stream at k_server, answers 101 and relays in a task of its own.
pub async fn open(
    admitted: Admitted,
    mut request: Request<RequestBody>,
    upstream: Arc<crate::upstream::Upstream>,
    sessions: Arc<SessionStore>,
    limits: SocketLimits,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<HttpResponse, ApiError> {
    let Admitted {
        stream,
        redeemed,
        slot,
    } = admitted;
    let upstream_config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_upstream_message))
        .max_frame_size(Some(limits.max_upstream_message));
    let server = upstream
        .open_events(stream, &redeemed.username, upstream_config)
        .await?;
    let client_config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_client_message))
        .max_frame_size(Some(limits.max_client_message))
        .max_write_buffer_size(256 * 1024);
    let (response, websocket) = hyper_tungstenite::upgrade(&mut request, Some(client_config))
        .map_err(|_| {
            ApiError::bad_request(
                "websocket_required",
                "The upgrade lacks Sec-WebSocket-Key or Sec-WebSocket-Version: 13.",
            )
        })?;
    tracing::info!(event = "ws_open", user = %redeemed.username, session = %redeemed.session_id, stream, "audit");
    tokio::spawn(async move {
        let _slot = slot;
        let client = match websocket.await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(error = %err, "the client's upgrade did not complete");
                return;
            }
        };
        let watched = redeemed.clone();
        let watch = move || {
            sessions
                .peek(&watched.username, &watched.session_id, &watched.token)
                .map_err(|err| end_code(&err))
        };
        let end = relay(client, server, watch, limits, stopping).await;
        tracing::info!(event = "ws_close", user = %redeemed.username, session = %redeemed.session_id, stream, why = %end, "audit");
    });
    Ok(response.map(|body| {
        // The 101 answer has no body.
        let _ = body;
        http_body_util::Full::new(bytes::Bytes::new())
    }))
}

/// Resolves once k_proxy starts shutting down.
pub(crate) async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

pub(crate) fn end_code(err: &SessionError) -> &'static str {
    match err {
        SessionError::Ended(reason) => reason.code(),
        _ => "invalid_token",
    }
}

pub(crate) fn close_frame(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Relays k_server's messages to the client until one side ends, the session ends, the
/// client stops answering pings or reading, or k_proxy stops. Returns why it ended.
pub async fn relay<C, U>(
    mut client: WebSocketStream<C>,
    mut server: WebSocketStream<U>,
    session_live: impl Fn() -> Result<(), &'static str>,
    limits: SocketLimits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> String
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut check = tokio::time::interval(limits.session_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + limits.ping_interval,
        limits.ping_interval,
    );
    let mut unanswered = 0u32;
    let send_timeout = limits.send_timeout;
    loop {
        let step = tokio::select! {
            _ = check.tick() => match session_live() {
                Err(code) => Step::Close(SESSION_ENDED, format!("session_ended:{code}")),
                Ok(()) => Step::Go,
            },
            _ = ping.tick() => ping_client(&mut client, &mut unanswered, send_timeout).await,
            () = stopped(&mut stopping) => Step::Close(1001, "k_proxy is shutting down".to_owned()),
            message = server.next() => from_server(message, &mut client, send_timeout).await,
            message = client.next() => from_client(message, &mut unanswered),
        };
        match step {
            Step::Go => {}
            Step::Close(code, reason) => {
                // Bounded in time: a client that does not read cannot hold the task.
                let _ = tokio::time::timeout(
                    send_timeout,
                    client.send(close_frame(code, reason.clone())),
                )
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(1), server.close(None)).await;
                return reason;
            }
            Step::ClientClosed => {
                let _ = tokio::time::timeout(Duration::from_secs(1), server.close(None)).await;
                return "the client closed".to_owned();
            }
            Step::Broken => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server.close(None)).await;
    "the client's connection broke".to_owned()
}

/// What the relay does after one event.
enum Step {
    /// Go on relaying.
    Go,
    /// Close the client's socket with this code and reason, then k_server's.
    Close(u16, String),
    /// The client closed its socket.
    ClientClosed,
    /// The client's connection broke: nothing more can be sent to it.
    Broken,
}

const TOO_SLOW: &str = "too slow: the client does not read";

/// A ping to the client; two unanswered in a row end the socket.
async fn ping_client<C>(
    client: &mut WebSocketStream<C>,
    unanswered: &mut u32,
    send_timeout: Duration,
) -> Step
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if *unanswered >= 2 {
        return Step::Close(1001, "no answer to pings".to_owned());
    }
    *unanswered += 1;
    match tokio::time::timeout(send_timeout, client.send(Message::Ping(Vec::new().into()))).await {
        Ok(Ok(())) => Step::Go,
        Ok(Err(_)) => Step::Broken,
        Err(_) => Step::Close(1008, TOO_SLOW.to_owned()),
    }
}

/// A message from k_server: data goes to the client (within `send_timeout`).
async fn from_server<C>(
    message: Option<Result<Message, tungstenite::Error>>,
    client: &mut WebSocketStream<C>,
    send_timeout: Duration,
) -> Step
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match message {
        Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
            match tokio::time::timeout(send_timeout, client.send(message)).await {
                Ok(Ok(())) => Step::Go,
                Ok(Err(_)) => Step::Broken,
                Err(_) => Step::Close(1008, TOO_SLOW.to_owned()),
            }
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Step::Go,
        Some(Ok(Message::Close(_))) | None => {
            Step::Close(1011, "k_server ended the stream".to_owned())
        }
        Some(Err(err)) => {
            tracing::debug!(error = %err, "the stream from k_server broke");
            Step::Close(1011, "k_server ended the stream".to_owned())
        }
    }
}

/// A message from the client: pongs count, data is ignored (the stream is one way, and
/// a message is bounded by the socket's configuration), a close ends the relay.
fn from_client(message: Option<Result<Message, tungstenite::Error>>, unanswered: &mut u32) -> Step {
    match message {
        Some(Ok(Message::Pong(_))) => {
            *unanswered = 0;
            Step::Go
        }
        Some(Ok(Message::Ping(_) | Message::Frame(_) | Message::Text(_) | Message::Binary(_))) => {
            Step::Go
        }
        Some(Ok(Message::Close(_))) | None => Step::ClientClosed,
        Some(Err(tungstenite::Error::Capacity(_))) => {
            Step::Close(1009, "message too big".to_owned())
        }
        Some(Err(_)) => Step::Broken,
    }
}
