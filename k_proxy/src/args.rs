//! The command line. The runbook's flags (--host, --port, --session-ttl, --server-base-url,
//! --server-ca-file, --proxy-token, --tls-certfile, --tls-keyfile) keep their meaning.

use std::path::PathBuf;

use chromecard_gate::SoftBehavior;
use clap::{Parser, ValueEnum};

use crate::upstream::UpstreamHttp2;

/// Which authenticator stands at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GateKind {
    /// The real USB FIDO2 key, through hidapi and chromecard's CTAPHID layer.
    Fido2,
    /// A software authenticator: development and tests only, proves nothing about a person.
    Soft,
}

/// What a new login does to the user's other sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnNewLogin {
    Keep,
    Supersede,
}

/// chromecard k_proxy: sessions gated by a FIDO2 key, and /resource/* forwarding to
/// k_server over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "k_proxy", version)]
pub struct Args {
    /// --host, the proxy token and the listener's TLS files: the same in both binaries.
    #[command(flatten)]
    pub shared: chromecard_http::SharedArgs,

    #[command(flatten)]
    pub serve: chromecard_http::ServeArgs,

    /// TCP port to listen on.
    #[arg(long, default_value_t = 8770)]
    pub port: u16,

    /// Also answer requests addressed to this host (repeatable): a bare host name or IP
    /// address, any port; with :PORT, that port only. Requests naming any other host get
    /// 421 (a guard against DNS rebinding). Always allowed: localhost, 127.0.0.1 and [::1]
    /// on any port, the --host address, and the names in --tls-certfile's certificate.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub allowed_host: Vec<crate::host_allow::AllowedHost>,

    /// Absolute session lifetime in seconds, from login.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub session_ttl: u64,

    /// Seconds a session may go unused before it ends; each use restarts the wait.
    /// 0 turns the idle limit off (only --session-ttl applies).
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub idle_timeout: u64,

    /// What a new login does to the same user's older sessions: keep them, or end them
    /// (they then answer 401 "superseded").
    #[arg(long, value_enum, default_value_t = OnNewLogin::Keep)]
    pub on_new_login: OnNewLogin,

    /// Keep live sessions (token hashes only) in this file, so a restart does not force a
    /// new touch. Default: memory only.
    #[arg(long, value_name = "PATH")]
    pub session_store: Option<PathBuf>,

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

    /// Also accept TLS 1.2 (toward clients and toward k_server). Default: TLS 1.3 only.
    #[arg(long)]
    pub allow_tls12: bool,

    /// Client certificate presented to k_server. Default: --tls-certfile.
    #[arg(long, value_name = "PATH", requires = "client_keyfile")]
    pub client_certfile: Option<PathBuf>,

    /// Private key for --client-certfile. Default: --tls-keyfile.
    #[arg(long, value_name = "PATH", requires = "client_certfile")]
    pub client_keyfile: Option<PathBuf>,

    /// The authenticator: fido2 (the real USB key) or soft (tests and demos only).
    #[arg(long, value_enum, default_value_t = GateKind::Fido2, global = true)]
    pub gate: GateKind,

    /// With --gate soft: how the software authenticator behaves (present, no-key, no-touch,
    /// slow, refuse, cloned-counter, foreign-key, up-clear, wrong-rp, replay).
    #[arg(
        long,
        value_name = "BEHAVIOR",
        default_value = "present",
        global = true
    )]
    pub soft_behavior: SoftBehavior,

    /// With --gate soft: the file holding the software key (created 0600), so that
    /// `k_proxy enroll` and the server can be separate processes. Default: an in-memory key.
    #[arg(long, value_name = "PATH", global = true)]
    pub soft_key_file: Option<PathBuf>,

    /// With --gate soft: a PKCS#8 PEM P-256 key with which the software authenticator
    /// attests new credentials (tests and demos); needs --soft-attestation-certs.
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        requires = "soft_attestation_certs"
    )]
    pub soft_attestation_key: Option<PathBuf>,

    /// With --soft-attestation-key: its certificate chain (PEM, leaf first).
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        requires = "soft_attestation_key"
    )]
    pub soft_attestation_certs: Option<PathBuf>,

    /// With --soft-attestation-key: the statement the software authenticator makes,
    /// packed (with x5c) or fido-u2f.
    #[arg(long, value_name = "FMT", default_value = "packed", global = true)]
    pub soft_attestation_format: chromecard_gate::SoftAttestationFormat,

    /// Log in only with credentials that were attested at enrolment (`k_proxy enroll
    /// --attestation-roots`); others are refused with 401 not_attested.
    #[arg(long)]
    pub require_attested: bool,

    /// What a login must prove: presence (a key answers GetInfo), touch (a person touched
    /// the key; nothing signed), assertion (the user's enrolled key signed a fresh
    /// challenge). Default: assertion with --credentials-file, else presence.
    #[arg(long, value_name = "LEVEL", global = true)]
    pub gate_level: Option<chromecard_gate::GateLevel>,

    /// The enrolment file (pam-u2f line format, written by `k_proxy enroll`); sign counts
    /// are kept beside it in FILE.counters.
    #[arg(long, value_name = "PATH", global = true)]
    pub credentials_file: Option<PathBuf>,

    /// The relying-party id credentials are scoped to; changing it orphans enrolments.
    #[arg(long, value_name = "ID", default_value = "chromecard", global = true)]
    pub rp_id: String,

    /// With --gate fido2: the hidraw path of the key to use when several are attached.
    #[arg(long, value_name = "PATH", global = true)]
    pub device: Option<String>,

    /// Seconds one operation on the key may take before the login fails.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300), global = true)]
    pub touch_timeout: u64,

    /// Live WebSockets (`/resource/<name>/events`) one session may hold; then 429.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub ws_max_per_session: usize,

    /// Live WebSockets in all; then 503.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100000))]
    pub ws_max_sockets: usize,

    /// Seconds between pings on a WebSocket; a client that answers none of two is dropped.
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub ws_ping_interval: u64,

    /// Seconds a login waits for the key while another login uses it; then 503.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub device_wait: u64,

    /// Seconds k_server may take to answer a forwarded request; then 504.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub upstream_timeout: u64,

    /// Seconds to establish the connection to k_server, TCP connect and TLS handshake
    /// together; then 502.
    #[arg(long, value_name = "SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub upstream_connect_timeout: u64,

    /// When forwarded requests go to k_server over HTTP/2, which k_server offers by ALPN
    /// (https --server-base-url only): `concurrent` sends the requests that find others in
    /// flight from their thread, and the next 8 that find none, over one HTTP/2 connection
    /// per thread, which costs less CPU per request under load, and a request alone after
    /// those over HTTP/1.1, the quickest for one;
    /// `always` sends every request over HTTP/2; `never` keeps to HTTP/1.1.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = UpstreamHttp2::Concurrent)]
    pub upstream_http2: UpstreamHttp2,

    /// Largest request body forwarded to k_server, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub max_body_bytes: u64,

    /// Live sessions kept at most; logins beyond it get 503.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_sessions: u64,

    /// Refused logins for one username from one client address within --login-window before
    /// that username is banned from that address; 0: off.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub login_max_failures: u32,

    /// Refused logins from one client address within --login-window before it is banned; 0: off.
    /// (Behind qvm-connect-tcp every client is 127.0.0.1, so this limits the whole client qube.)
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub login_max_failures_per_address: u32,

    /// Seconds after which refused logins are forgotten: failures add up while each comes
    /// within this long of the one before.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_window: u64,

    /// Seconds a banned username or address is refused (429 with Retry-After).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_ban: u64,

    /// Logins that may wait for the key at once; more get 503 at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_waiting_logins: u64,

    /// Serve GET /metrics (Prometheus text) on this address, e.g. 127.0.0.1:9770. Default: off.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<std::net::SocketAddr>,

    /// Largest request head (all header lines) in bytes; larger gets 431. At most 100 fields.
    #[arg(long, value_name = "BYTES", default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1024..=1_048_576))]
    pub max_header_bytes: u64,

    /// `enroll`: manage the enrolment file instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// k_proxy's subcommands (without one, k_proxy serves).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Enrol a FIDO2 key for a user (one touch), or list / remove enrolments.
    Enroll(EnrollCommand),
}

/// `k_proxy enroll --username NAME [--require-uv]`, `k_proxy enroll list`, `k_proxy enroll remove`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EnrollCommand {
    #[command(subcommand)]
    pub action: Option<Action>,

    /// The user whose key to enrol (touch the key when it blinks).
    #[arg(long, required = true)]
    pub username: Option<String>,

    /// Also require user verification (the key's PIN or biometric) at every login with
    /// this credential (`+verification`); logins then carry the PIN unless the key has
    /// built-in UV.
    #[arg(long)]
    pub require_uv: bool,

    /// Verify the key's attestation (packed with x5c, or fido-u2f) up to one of these
    /// roots: a PEM file, or a directory of *.pem/*.crt/*.cer files (repeatable). `none`
    /// and self attestation are refused.
    #[arg(long, value_name = "PEM_FILE_OR_DIR")]
    pub attestation_roots: Vec<PathBuf>,

    /// A FIDO Metadata Service v3 blob (JWT): the key's entry supplies its attestation
    /// roots, and revoked or compromised models are refused. Needs --mds-root.
    #[arg(long, value_name = "FILE", requires = "mds_root")]
    pub mds_blob: Option<PathBuf>,

    /// The root certificate (PEM) the metadata blob's signer must chain to.
    #[arg(long, value_name = "PEM", requires = "mds_blob")]
    pub mds_root: Option<PathBuf>,
    /// Also require the key's PIN at every login with this credential (`+pin`, pam-u2f's
    /// `-N`): the login body carries `"pin"`.
    #[arg(long)]
    pub require_pin: bool,

    /// Ask for the key's PIN (on the terminal, no echo) even if the key does not insist
    /// on it. Without it, k_proxy asks only when the key wants its PIN.
    #[arg(long, conflicts_with = "pin_file")]
    pub pin: bool,

    /// Read the key's PIN from this file (its first line) instead of the terminal. Never
    /// put a PIN itself on the command line.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the enrolled users and their credentials.
    List {
        /// Only this user.
        #[arg(long)]
        username: Option<String>,
    },
    /// Print the dom0 qrexec policy lines that let k_proxy's qube ask the key in sys-usb
    /// for assertions with the enrolled credentials only (Qubes' CTAP proxy names each
    /// credential in its u2f.Authenticate call); see qubes/policy.d/30-chromecard-ctap.policy.
    QubesPolicy {
        /// The qube k_proxy runs in.
        #[arg(long, default_value = "k_proxy")]
        source: String,
        /// The qube the key is attached to.
        #[arg(long, default_value = "sys-usb")]
        target: String,
    },
    /// Remove a user's credentials: all of them, or those whose id starts with --credential.
    Remove {
        /// The user.
        #[arg(long)]
        username: String,
        /// The start of a credential id as `list` shows it.
        #[arg(long, value_name = "ID_PREFIX")]
        credential: Option<String>,
    },
}
