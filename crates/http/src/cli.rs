//! The flags both binaries take in the same meaning, as clap groups each flattens into
//! its `Args`: where to listen, the proxy token and the TLS files of the listener
//! ([`SharedArgs`]), and the bounds every accepted connection is held to ([`ServeArgs`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromecard_hop::{ProxyToken, ProxyTokenError, PROXY_TOKEN_ENV};

use crate::ServeSettings;

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

/// `--header-read-timeout`, `--write-timeout`, `--tls-handshake-timeout`,
/// `--max-connections`: the bounds of the listener, the same in both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Seconds a client may take to send a request head (slowloris bound); also the idle
    /// keep-alive wait.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,

    /// Seconds a write to a client may make no progress (a client that stops reading its
    /// answers) before the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub write_timeout: u64,

    /// Seconds a client may take to complete the TLS handshake (a client that connects
    /// and never says hello) before the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tls_handshake_timeout: u64,

    /// Connections served at once; more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
}

impl ServeArgs {
    /// These bounds over the defaults of everything else, serving on `connection_threads`
    /// threads.
    pub fn settings(&self, connection_threads: usize) -> ServeSettings {
        ServeSettings {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            write_stall_timeout: Duration::from_secs(self.write_timeout),
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            connection_threads,
            ..ServeSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ServeArgs;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn serve_flags_become_the_settings_and_default_to_the_documented_bounds() {
        let defaults = Flags::parse_from(["x"]).serve.settings(2);
        assert_eq!(defaults.header_read_timeout.as_secs(), 10);
        assert_eq!(defaults.write_stall_timeout.as_secs(), 10);
        assert_eq!(defaults.tls_handshake_timeout.as_secs(), 10);
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.connection_threads, 2);

        let set = Flags::parse_from(["x", "--tls-handshake-timeout", "3", "--write-timeout", "4"])
            .serve
            .settings(0);
        assert_eq!(set.tls_handshake_timeout.as_secs(), 3);
        assert_eq!(set.write_stall_timeout.as_secs(), 4);
        assert_eq!(set.connection_threads, 0);
    }

    #[test]
    fn a_zero_or_huge_handshake_bound_is_refused_naming_the_flag() {
        for bad in ["0", "3601", "soon"] {
            let err = Flags::try_parse_from(["x", "--tls-handshake-timeout", bad])
                .err()
                .expect("refused");
            assert!(err.to_string().contains("--tls-handshake-timeout"), "{err}");
        }
    }
}
