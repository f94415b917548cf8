//! Live events for k_proxy's WebSockets: `GET /resource/counter/events` pushes each new
//! counter value; `GET /resource/secrets/events` pushes the names the caller's secrets
//! gain or lose, for that user only (the filter is here, at the source: another user's
//! event never leaves k_server on this socket). Only k_proxy reaches these (the hop's
//! mutual TLS and proxy token are checked before), and it relays them to browsers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chromecard_http::{ApiError, HttpResponse, RequestBody};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use hyper_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use hyper_tungstenite::tungstenite::Message;
use serde_json::json;
use tokio::sync::broadcast;

/// Events buffered per socket; a socket that falls further behind is closed.
const BACKLOG: usize = 256;
/// Event sockets open at once.
pub const MAX_SOCKETS: usize = 4096;
/// A message k_proxy does not take within this long closes the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
enum Event {
    Counter(u64),
    Secret {
        user: Arc<str>,
        name: Arc<str>,
        added: bool,
    },
}

/// The two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Counter,
    Secrets,
}

impl Stream {
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/resource/counter/events" => Some(Self::Counter),
            "/resource/secrets/events" => Some(Self::Secrets),
            _ => None,
        }
    }
}

pub struct Events {
    sender: broadcast::Sender<Event>,
    open: Arc<AtomicUsize>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// A socket's subscription, taken before the value it starts with is read, so that an
/// increment committed in between is not missed.
pub struct Subscription(broadcast::Receiver<Event>);

/// The counter values a socket sends: each higher than the last. Increments commit in
/// order but are announced by whichever request finishes first, so N can come before
/// N-1; and an increment between the subscription and the first read is announced with a
/// value that read already gave.
#[derive(Debug, Default)]
struct CounterOrder {
    last: Option<u64>,
}

impl CounterOrder {
    fn admits(&mut self, value: u64) -> bool {
        if self.last.is_some_and(|last| value <= last) {
            return false;
        }
        self.last = Some(value);
        true
    }
}

impl Events {
    /// Subscribes a socket to come: before the counter's current value is read for it.
    pub fn subscribe(&self) -> Subscription {
        Subscription(self.sender.subscribe())
    }

    /// A new counter value (after it is on disk).
    pub fn counter(&self, value: u64) {
        let _ = self.sender.send(Event::Counter(value));
    }

    /// One of `user`'s secrets was added (`true`) or removed.
    pub fn secret(&self, user: &str, name: &str, added: bool) {
        let _ = self.sender.send(Event::Secret {
            user: user.into(),
            name: name.into(),
            added,
        });
    }

    /// Upgrades the request and streams `stream`'s events for `user` from `subscription`;
    /// the counter's stream starts with `counter`, its value as read after subscribing.
    pub fn serve(
        &self,
        mut request: Request<RequestBody>,
        stream: Stream,
        user: &str,
        subscription: Subscription,
        counter: Option<u64>,
    ) -> Result<HttpResponse, ApiError> {
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SOCKETS).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "socket_limit",
                "k_server holds as many event sockets as it allows.",
            ));
        }
        let open = self.open.clone();
        let release = move || {
            open.fetch_sub(1, Ordering::AcqRel);
        };
        // k_proxy sends nothing but control frames.
        let config = WebSocketConfig::default()
            .max_message_size(Some(4096))
            .max_frame_size(Some(4096));
        let (response, websocket) = match hyper_tungstenite::upgrade(&mut request, Some(config)) {
            Ok(pair) => pair,
            Err(_) => {
                release();
                return Err(ApiError::bad_request(
                    "websocket_required",
                    "This endpoint is a WebSocket upgrade (Sec-WebSocket-Key, version 13).",
                ));
            }
        };
        let Subscription(mut events) = subscription;
        let mut order = CounterOrder::default();
        let first = counter
            .filter(|&value| order.admits(value))
            .map(|value| json!({"type": "counter", "counter": value}).to_string());
        let user: Arc<str> = user.into();
        tokio::spawn(async move {
            let _open = Release(Some(Box::new(release)));
            let Ok(mut socket) = websocket.await else {
                return;
            };
            if let Some(first) = first {
                if socket.send(Message::Text(first.into())).await.is_err() {
                    return;
                }
            }
            let close = loop {
                tokio::select! {
                    event = events.recv() => {
                        let text = match event {
                            Ok(Event::Counter(value)) if stream == Stream::Counter => {
                                if !order.admits(value) {
                                    continue;
                                }
                                json!({"type": "counter", "counter": value}).to_string()
                            }
                            Ok(Event::Secret { user: owner, name, added })
                                if stream == Stream::Secrets && owner == user =>
                            {
                                let kind = if added { "secret_added" } else { "secret_removed" };
                                json!({"type": kind, "name": &*name}).to_string()
                            }
                            Ok(_) => continue,
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                break Some((1008, "fell behind"));
                            }
                            Err(broadcast::error::RecvError::Closed) => break Some((1001, "k_server is stopping")),
                        };
                        match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break None,
                            Err(_) => break Some((1008, "too slow")),
                        }
                    }
                    message = socket.next() => match message {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                        Some(Ok(_)) => {}
                    },
                }
            };
            if let Some((code, reason)) = close {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    socket.send(Message::Close(Some(frame))),
                )
                .await;
            }
        });
        Ok(response.map(|_| http_body_util::Full::new(bytes::Bytes::new())))
    }
}

/// Runs its closure once, when dropped.
struct Release(Option<Box<dyn FnOnce() + Send>>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_sends_each_counter_value_once_and_never_a_lower_one() {
        let mut order = CounterOrder::default();
        // Read after subscribing: 5. The increment to 5 is announced after that read,
        // and the one to 7 before the one to 6.
        let sent: Vec<u64> = [5, 5, 7, 6, 8]
            .into_iter()
            .filter(|&value| order.admits(value))
            .collect();
        assert_eq!(sent, [5, 7, 8]);
    }
}
