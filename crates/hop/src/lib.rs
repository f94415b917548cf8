#![forbid(unsafe_code)]
//! What k_proxy and k_server must agree on for the second hop: which headers carry the
//! proxy's credential and the user's identity, how the proxy token is loaded and checked,
//! and what a username may look like.

mod proxy_token;
mod username;

pub use proxy_token::{ProxyToken, ProxyTokenError, ProxyTokenSource, PROXY_TOKEN_ENV};
pub use username::{validate_username, UsernameError, MAX_USERNAME_LEN};

/// Header carrying the shared proxy token from k_proxy to k_server.
pub const PROXY_TOKEN_HEADER: &str = "x-proxy-token";
/// Header carrying the session's user from k_proxy to k_server.
pub const USER_HEADER: &str = "x-chromecard-user";
/// Every header with this prefix is ours: k_proxy drops any copy a client sends.
pub const OWN_HEADER_PREFIX: &str = "x-chromecard-";
