//! The command line. The runbook's flags (--host, --port, --session-ttl, --server-base-url,
//! --server-ca-file, --proxy-token, --tls-certfile, --tls-keyfile) keep their meaning.

use std::path::PathBuf;

use chromecard_gate::SoftBehavior;
use clap::{Parser, ValueEnum};

/// Which authenticator stands at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GateKind {
    /// The real USB FIDO2 key, through ctap-hid-fido2.
    Fido2,
    /// A software authenticator: development and tests only, proves nothing about a person.
    Soft,
}

/// chromecard k_proxy: sessions gated by a FIDO2 key, and /resource/* forwarding to
/// k_server over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "k_proxy", version)]
pub struct Args {
    /// Address to listen on. Qubes' qubes.ConnectTCP connects to 127.0.0.1, so keep IPv4 loopback.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port to listen on.
    #[arg(long, default_value_t = 8770)]
    pub port: u16,

    /// Absolute session lifetime in seconds, from login.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub session_ttl: u64,

    /// Where k_server is: https://HOST:PORT (mutual TLS), or http:// on loopback only.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8780")]
    pub server_base_url: String,

    /// CA that k_server's certificate must chain to; the only roots trusted for the hop.
    /// Required with an https:// --server-base-url.
    #[arg(long, value_name = "PATH")]
    pub server_ca_file: Option<PathBuf>,

    /// Name to verify in k_server's certificate. Default: the host of --server-base-url.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,

    /// The proxy token sent to k_server (legacy: visible to every local user in the process
    /// list; prefer --proxy-token-file or CHROMECARD_PROXY_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub proxy_token: Option<String>,

    /// File holding the proxy token (one line). Preferred over --proxy-token.
    #[arg(long, value_name = "PATH")]
    pub proxy_token_file: Option<PathBuf>,

    /// Certificate (PEM) to serve clients over TLS; also the client certificate toward
    /// k_server unless --client-certfile is given.
    #[arg(long, value_name = "PATH", requires = "tls_keyfile")]
    pub tls_certfile: Option<PathBuf>,

    /// Private key for --tls-certfile.
    #[arg(long, value_name = "PATH", requires = "tls_certfile")]
    pub tls_keyfile: Option<PathBuf>,

    /// Client certificate presented to k_server. Default: --tls-certfile.
    #[arg(long, value_name = "PATH", requires = "client_keyfile")]
    pub client_certfile: Option<PathBuf>,

    /// Private key for --client-certfile. Default: --tls-keyfile.
    #[arg(long, value_name = "PATH", requires = "client_certfile")]
    pub client_keyfile: Option<PathBuf>,

    /// The authenticator: fido2 (the real USB key) or soft (tests and demos only).
    #[arg(long, value_enum, default_value_t = GateKind::Fido2)]
    pub gate: GateKind,

    /// With --gate soft: how the software authenticator behaves (present, no-key, no-touch).
    #[arg(long, value_name = "BEHAVIOR", default_value = "present")]
    pub soft_behavior: SoftBehavior,

    /// With --gate fido2: the hidraw path of the key to use when several are attached.
    #[arg(long, value_name = "PATH")]
    pub device: Option<String>,

    /// Seconds one operation on the key may take before the login fails.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub touch_timeout: u64,

    /// Seconds a login waits for the key while another login uses it; then 503.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub device_wait: u64,

    /// Seconds k_server may take to answer a forwarded request; then 504.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub upstream_timeout: u64,

    /// Seconds to establish the connection (TCP) to k_server; then 502.
    #[arg(long, value_name = "SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub upstream_connect_timeout: u64,

    /// Largest request body forwarded to k_server, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub max_body_bytes: u64,

    /// Live sessions kept at most; logins beyond it get 503.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_sessions: u64,

    /// Seconds a client may take to send a request head (slowloris bound); also the idle
    /// keep-alive wait.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,

    /// Connections served at once; more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
}
