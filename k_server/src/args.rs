//! The command line. The first five flags are the prototype runbook's and keep its meaning.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// chromecard k_server: protected resources behind mutual TLS and the proxy token.
///
/// Without --tls-certfile/--tls-keyfile it serves plain HTTP (the same-VM quickstart).
/// With them it serves TLS and requires a client certificate from the chain CA.
#[derive(Debug, Parser)]
#[command(name = "k_server", version)]
pub struct Args {
    /// --host, the proxy token and the listener's TLS files: the same in both binaries.
    #[command(flatten)]
    pub shared: chromecard_http::SharedArgs,

    #[command(flatten)]
    pub serve: chromecard_http::ServeArgs,

    /// TCP port to listen on.
    #[arg(long, default_value_t = 8780)]
    pub port: u16,

    /// CA whose certificates clients (k_proxy) must present.
    /// Default: ca.crt in the directory of --tls-certfile.
    #[arg(long, value_name = "PATH", requires = "tls_certfile")]
    pub client_ca_file: Option<PathBuf>,

    /// Allow only k_proxy instances whose client certificate has this name as its subject
    /// CN or a DNS subjectAltName (repeat for several). Default: any certificate from the
    /// chain CA. Needs --tls-certfile.
    #[arg(long = "allow-client", value_name = "NAME", requires = "tls_certfile")]
    pub allow_client: Vec<String>,

    /// How increments and secret writes reach the disk: `group` commits the writes that
    /// arrive together in one durable transaction; `per-request` gives every write its
    /// own (for comparison; slower under load). Both answer only after the fsync.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = CommitModeArg::Group)]
    pub commit_mode: CommitModeArg,

    /// Directory of the durable store (created 0700).
    /// Default: $XDG_STATE_HOME/chromecard/k_server, else ~/.local/state/chromecard/k_server.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Offer only HTTP/1.1 on the TLS listener. By default it also offers HTTP/2 (by ALPN),
    /// which k_proxy uses to carry concurrent requests on one connection
    /// (its --upstream-http2); either way a client certificate comes first.
    #[arg(long)]
    pub no_http2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CommitModeArg {
    Group,
    PerRequest,
}
