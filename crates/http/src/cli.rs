//! The flags both binaries take in the same meaning, as one clap group each flattens
//! into its `Args`: where to listen, the proxy token, and the TLS files of the listener.

use std::path::{Path, PathBuf};

use chromecard_hop::{ProxyToken, ProxyTokenError, PROXY_TOKEN_ENV};

/// `--host`, `--proxy-token`, `--proxy-token-file`, `--tls-certfile`, `--tls-keyfile`.
#[derive(Debug, Clone, clap::Args)]
pub struct SharedArgs {
    /// Address to listen on. Qubes' qubes.ConnectTCP connects to 127.0.0.1, so keep IPv4
    /// loopback.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// The proxy token between k_proxy and k_server (legacy: visible to every local user
    /// in the process list; prefer --proxy-token-file or CHROMECARD_PROXY_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub proxy_token: Option<String>,

    /// File holding the proxy token (one line). Preferred over --proxy-token.
    #[arg(long, value_name = "PATH")]
    pub proxy_token_file: Option<PathBuf>,

    /// This listener's certificate (PEM): serve TLS. (k_server then requires a client
    /// certificate from the chain CA; k_proxy also presents it to k_server unless
    /// --client-certfile is given.)
    #[arg(long, value_name = "PATH", requires = "tls_keyfile")]
    pub tls_certfile: Option<PathBuf>,

    /// Private key for --tls-certfile (PEM, PKCS#8 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_certfile")]
    pub tls_keyfile: Option<PathBuf>,

    /// Threads that serve connections, each keeping its connections (and, in k_proxy, the
    /// connections to k_server they use) to itself. Default: one per CPU. 0 serves them
    /// on the shared work-stealing runtime instead.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub connection_threads: Option<u16>,
}

impl SharedArgs {
    /// `--connection-threads`, or one per CPU.
    pub fn connection_threads(&self) -> usize {
        match self.connection_threads {
            Some(threads) => usize::from(threads),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// The proxy token from the file, the environment or the flag (in that order of
    /// preference), with a log line naming where it came from (never the token).
    pub fn load_proxy_token(&self) -> Result<ProxyToken, ProxyTokenError> {
        let token = ProxyToken::load(
            self.proxy_token_file.as_deref(),
            std::env::var(PROXY_TOKEN_ENV).ok(),
            self.proxy_token.clone(),
        )?;
        tracing::info!(source = %token.source(), "proxy token loaded");
        Ok(token)
    }

    /// The listener's certificate and key, when TLS is on.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        match (&self.tls_certfile, &self.tls_keyfile) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }
}
