#![forbid(unsafe_code)]
//! Parsing what an untrusted client sends k_proxy, kept apart from the proxy so that it is
//! small, pure (no I/O, no state) and can be fuzzed on its own: the credential (Bearer
//! header or session cookie, with the cookie's CSRF check) and the login body.

pub mod credential;
pub mod login;

pub use credential::{
    bearer_token, clear_session_cookie, set_session_cookie, take_credential, Credential,
    CredentialSource, OriginPolicy, CSRF_HEADER, SESSION_COOKIE,
};
pub use login::{parse_login, require_json, LoginRequest, MAX_LOGIN_BODY};
