//! Live resources for browsers: single-use WebSocket tickets and the event sockets.

use std::time::Duration;

/// How long a WebSocket ticket stays usable.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
