//! The tickets (minted, redeemed once, bound to a session and an Origin, kept hashed)
//! and the bounds on open sockets.

use super::*;

/// How long a WebSocket ticket stays usable.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Close code when the session ended; the reason is `session_ended:<code>`.
pub const SESSION_ENDED: u16 = 4401;
/// Tickets outstanding at most (each live for 30 s); beyond it, minting is refused.
pub(crate) const MAX_TICKETS: usize = 10_000;
/// Tickets one session may hold unused at once.
pub(crate) const MAX_TICKETS_PER_SESSION: usize = 16;
/// The streams k_server serves.
pub(crate) const STREAMS: [&str; 2] = ["counter", "secrets"];

/// The bounds of the event sockets.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    pub per_session: usize,
    pub total: usize,
    /// Largest frame and message a client may send (it has nothing to say but control frames).
    pub max_client_message: usize,
    /// Largest message relayed from k_server.
    pub max_upstream_message: usize,
    /// A ping this often; a client that answered none of the last two is dropped.
    pub ping_interval: Duration,
    /// A message the client does not take within this long drops the client.
    pub send_timeout: Duration,
    /// How often the session is checked (the close comes within this much of its end).
    pub session_check: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            per_session: 4,
            total: 256,
            max_client_message: 4096,
            max_upstream_message: 64 * 1024,
            ping_interval: Duration::from_secs(20),
            send_timeout: Duration::from_secs(5),
            session_check: Duration::from_millis(250),
        }
    }
}

/// One outstanding ticket, keyed by its SHA-256.
pub(crate) struct Ticket {
    pub(crate) digest: [u8; 32],
    pub(crate) username: Arc<str>,
    pub(crate) session_id: String,
    pub(crate) token: TokenHash,
    pub(crate) origin: Option<String>,
    pub(crate) scope: Option<Arc<[String]>>,
    pub(crate) expires: Instant,
}

/// What a redeemed ticket vouches for.
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub username: Arc<str>,
    pub session_id: String,
    pub token: TokenHash,
    pub scope: Option<Arc<[String]>>,
}

/// The tickets and the open sockets.
pub struct Sockets {
    pub(crate) tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    pub(crate) open: Mutex<HashMap<String, usize>>,
    pub(crate) total: AtomicUsize,
    pub(crate) clock: Arc<dyn Clock>,
    pub limits: SocketLimits,
}

/// The first 8 characters: all a log line may show of a ticket.
pub(crate) fn prefix(ticket: &str) -> &str {
    ticket.get(..8).unwrap_or("")
}

pub(crate) fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

pub(crate) fn refused(code: &'static str, sentence: &'static str) -> ApiError {
    ApiError::unauthorized(code, sentence)
}

impl Sockets {
    pub fn new(limits: SocketLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            tickets: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            clock,
            limits,
        }
    }

    pub(crate) fn tickets(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Ticket>> {
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints a ticket for `session` (whose token hashes to `token`), asked from `origin`.
    pub fn mint(
        &self,
        session: &SessionView,
        token: TokenHash,
        origin: Option<&str>,
    ) -> Result<String, ApiError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_randomness",
                "k_proxy could not make a ticket; try again later.",
            )
        })?;
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        let now = self.clock.now();
        let mut tickets = self.tickets();
        tickets.retain(|_, t| t.expires > now);
        let held = tickets
            .values()
            .filter(|t| t.session_id == session.id)
            .count();
        if tickets.len() >= MAX_TICKETS || held >= MAX_TICKETS_PER_SESSION {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tickets",
                "Too many unused WebSocket tickets; use or let expire the ones you have.",
            )
            .with_retry_after(TICKET_TTL.as_secs()));
        }
        let key = digest(&ticket);
        tickets.insert(
            key,
            Ticket {
                digest: key,
                username: session.username.clone(),
                session_id: session.id.clone(),
                token,
                origin: origin.map(str::to_owned),
                scope: session.scope.clone(),
                expires: now + TICKET_TTL,
            },
        );
        drop(tickets);
        tracing::info!(event = "ws_ticket", user = %session.username, session = %session.id, ticket = prefix(&ticket), "audit");
        Ok(ticket)
    }

    /// Takes the ticket (it is gone afterwards, whatever the outcome) and checks its
    /// expiry and Origin.
    pub fn redeem(&self, presented: &str, origin: Option<&str>) -> Result<Redeemed, ApiError> {
        let well_formed = presented.len() == 43
            && presented
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return Err(refused(
                "malformed_ticket",
                "The ticket is not one k_proxy could have issued; get one from POST /session/ws-ticket.",
            ));
        }
        let key = digest(presented);
        let now = self.clock.now();
        let ticket = self.tickets().remove(&key);
        let Some(ticket) = ticket.filter(|t| bool::from(t.digest.ct_eq(&key))) else {
            tracing::info!(
                event = "ws_refused",
                code = "invalid_ticket",
                ticket = prefix(presented),
                "audit"
            );
            return Err(refused(
                "invalid_ticket",
                "The ticket is unknown or was already used; each ticket opens one socket. Get a new one.",
            ));
        };
        if now >= ticket.expires {
            tracing::info!(event = "ws_refused", code = "ticket_expired", user = %ticket.username, ticket = prefix(presented), "audit");
            return Err(refused(
                "ticket_expired",
                "The ticket is older than 30 seconds; get a new one from POST /session/ws-ticket.",
            ));
        }
        if ticket.origin.as_deref() != origin {
            tracing::warn!(event = "ws_refused", code = "origin_mismatch", user = %ticket.username, origin = ?origin, ticket = prefix(presented), "audit");
            return Err(refused(
                "origin_mismatch",
                "The socket's Origin is not the one the ticket was issued to.",
            ));
        }
        Ok(Redeemed {
            username: ticket.username,
            session_id: ticket.session_id,
            token: ticket.token,
            scope: ticket.scope,
        })
    }

    /// Reserves a socket for the session, within the bounds.
    pub(crate) fn reserve(self: &Arc<Self>, session_id: &str) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.get(session_id).copied().unwrap_or(0);
        if mine >= self.limits.per_session {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!("This session already has {mine} live sockets; close one first."),
            ));
        }
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "socket_limit",
                "k_proxy holds as many live sockets as it allows; try again later.",
            )
            .with_retry_after(5));
        }
        *open.entry(session_id.to_owned()).or_default() += 1;
        Ok(Slot {
            sockets: self.clone(),
            session_id: session_id.to_owned(),
        })
    }

    /// Live sockets in all.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// A reserved socket; released when dropped.
pub(crate) struct Slot {
    pub(crate) sockets: Arc<Sockets>,
    pub(crate) session_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.sockets.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.session_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.session_id);
            }
        }
        self.sockets.total.fetch_sub(1, Ordering::AcqRel);
    }
}
