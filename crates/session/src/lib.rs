#![forbid(unsafe_code)]
//! Sessions: 256-bit bearer tokens from the OS CSPRNG, stored only as SHA-256 hashes in a
//! concurrent map, with absolute and idle expiry, rotation, supersede, logout (one or all),
//! scopes, tombstones that say why a token ended, and sweeping.

mod clock;
mod persist;
mod store;
mod token;

pub use clock::{Clock, ManualClock, SystemClock};
pub use persist::{PersistError, SessionFile};
pub use store::{
    EndReason, EndedSession, Issued, NewSession, SessionError, SessionStore, SessionSummary,
    SessionView, StoreSettings,
};
pub use token::{SessionToken, TokenError, TokenHash};
