#![forbid(unsafe_code)]
//! Sessions: 256-bit bearer tokens from the OS CSPRNG, stored only as SHA-256 hashes in a
//! concurrent map, with an absolute lifetime, immediate logout and sweeping of the expired.

mod clock;
mod store;
mod token;

pub use clock::{Clock, ManualClock, SystemClock};
pub use store::{Session, SessionError, SessionStore, SessionView, StoreSettings};
pub use token::{SessionToken, TokenError, TokenHash};
