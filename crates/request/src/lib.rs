#![forbid(unsafe_code)]
//! Parsing what an untrusted client sends k_proxy, kept apart from the proxy so that it is
//! small, pure (no I/O, no state) and can be fuzzed on its own: the credential (Bearer
//! header or session cookie, with the cookie's CSRF check), the login and logout bodies,
//! and the resource path to forward. Each parser has a fuzz target (fuzz/).

pub mod credential;
pub mod login;
pub mod logout;
pub mod resource;

pub use credential::{
    bearer_token, clear_session_cookie, set_session_cookie, take_credential, Credential,
    CredentialSource, OriginPolicy, CSRF_HEADER, SESSION_COOKIE,
};
pub use login::{parse_login, require_json, LoginRequest, MAX_LOGIN_BODY};
pub use logout::parse_logout;
pub use resource::{checked_resource_path, resource_name, resource_path_is_clean};
