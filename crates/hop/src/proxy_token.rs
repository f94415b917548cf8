//! The shared secret k_proxy presents to k_server on every request. It is read from a file
//! (preferred), the environment, or argv (legacy: every local user can read argv), kept in
//! memory, and checked in constant time.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Environment variable that may carry the proxy token.
pub const PROXY_TOKEN_ENV: &str = "CHROMECARD_PROXY_TOKEN";

/// Tokens shorter than this are refused: a guessable token is no token.
const MIN_LEN: usize = 8;
/// The token file is tiny; anything larger is a mistake (a key or certificate given by error).
const MAX_FILE_BYTES: u64 = 4096;

/// Where the token came from; only the kind is ever logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyTokenSource {
    File(PathBuf),
    Environment,
    Argv,
}

impl std::fmt::Display for ProxyTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Environment => write!(f, "environment variable {PROXY_TOKEN_ENV}"),
            Self::Argv => f.write_str("--proxy-token on the command line"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyTokenError {
    #[error("no proxy token: give it with --proxy-token-file PATH (preferred), the {PROXY_TOKEN_ENV} environment variable, or --proxy-token")]
    Missing,
    #[error("the proxy token was given more than one way ({0}); give exactly one of --proxy-token-file, {PROXY_TOKEN_ENV}, --proxy-token")]
    Ambiguous(String),
    #[error("cannot read the proxy token file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy token file {0} is larger than {MAX_FILE_BYTES} bytes; it should hold only the token")]
    FileTooLarge(PathBuf),
    #[error("the proxy token from {0} is shorter than {MIN_LEN} characters")]
    TooShort(ProxyTokenSource),
    #[error("the proxy token from {0} contains characters not allowed in an HTTP header (use printable ASCII)")]
    NotHeaderSafe(ProxyTokenSource),
}

/// The loaded token. Not `Display`; its `Debug` is redacted.
#[derive(Clone)]
pub struct ProxyToken {
    value: String,
    digest: [u8; 32],
    source: ProxyTokenSource,
}

impl std::fmt::Debug for ProxyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyToken(<redacted>, from {})", self.source)
    }
}

impl ProxyToken {
    /// Loads the token from exactly one of: `file`, `env_value`, `argv`.
    pub fn load(
        file: Option<&Path>,
        env_value: Option<String>,
        argv: Option<String>,
    ) -> Result<Self, ProxyTokenError> {
        let given: Vec<&str> = [
            file.map(|_| "--proxy-token-file"),
            env_value.as_ref().map(|_| PROXY_TOKEN_ENV),
            argv.as_ref().map(|_| "--proxy-token"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(ProxyTokenError::Ambiguous(given.join(", ")));
        }
        if let Some(path) = file {
            let value = read_token_file(path)?;
            return Self::from_value(value, ProxyTokenSource::File(path.to_owned()));
        }
        if let Some(value) = env_value {
            return Self::from_value(value, ProxyTokenSource::Environment);
        }
        if let Some(value) = argv {
            tracing::warn!("the proxy token was given with --proxy-token: every local user can read it from the process list; prefer --proxy-token-file");
            return Self::from_value(value, ProxyTokenSource::Argv);
        }
        Err(ProxyTokenError::Missing)
    }

    fn from_value(value: String, source: ProxyTokenSource) -> Result<Self, ProxyTokenError> {
        let value = value.trim().to_owned();
        if value.len() < MIN_LEN {
            return Err(ProxyTokenError::TooShort(source));
        }
        if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ProxyTokenError::NotHeaderSafe(source));
        }
        let digest = Sha256::digest(value.as_bytes()).into();
        Ok(Self {
            value,
            digest,
            source,
        })
    }

    pub fn source(&self) -> &ProxyTokenSource {
        &self.source
    }

    /// The value k_proxy puts in the header. Only the forwarding code should call this.
    pub fn header_value(&self) -> &str {
        &self.value
    }

    /// Constant-time check of a presented token. Both sides are hashed first so that the
    /// comparison takes the same time whatever the presented length.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&presented).into()
    }
}

fn read_token_file(path: &Path) -> Result<String, ProxyTokenError> {
    let unreadable = |source| ProxyTokenError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ProxyTokenError::FileTooLarge(path.to_owned()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the proxy token file is readable by other users; chmod 600 it");
        }
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn verifies_only_the_exact_token() {
        let token = ProxyToken::load(None, None, Some("dev-proxy-token".into())).unwrap();
        assert!(token.verify(b"dev-proxy-token"));
        for wrong in [
            &b""[..],
            b"dev-proxy-toke",
            b"dev-proxy-tokenX",
            b"DEV-PROXY-TOKEN",
        ] {
            assert!(!token.verify(wrong));
        }
        assert_eq!(token.source(), &ProxyTokenSource::Argv);
    }

    #[test]
    fn reads_a_file_and_trims_the_newline() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "from-a-file-123").unwrap();
        let token = ProxyToken::load(Some(file.path()), None, None).unwrap();
        assert!(token.verify(b"from-a-file-123"));
        assert_eq!(token.header_value(), "from-a-file-123");
    }

    #[test]
    fn exactly_one_source() {
        assert!(matches!(
            ProxyToken::load(None, None, None),
            Err(ProxyTokenError::Missing)
        ));
        let both = ProxyToken::load(None, Some("envtoken1".into()), Some("argvtoken1".into()));
        assert!(matches!(both, Err(ProxyTokenError::Ambiguous(_))));
        let env = ProxyToken::load(None, Some("envtoken1".into()), None).unwrap();
        assert_eq!(env.source(), &ProxyTokenSource::Environment);
    }

    #[test]
    fn refuses_weak_or_unsafe_tokens() {
        assert!(matches!(
            ProxyToken::load(None, None, Some("short".into())),
            Err(ProxyTokenError::TooShort(_))
        ));
        assert!(matches!(
            ProxyToken::load(None, None, Some("has space inside".into())),
            Err(ProxyTokenError::NotHeaderSafe(_))
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = ProxyToken::load(Some(Path::new("/nonexistent/token")), None, None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = ProxyToken::load(None, None, Some("super-secret-value".into())).unwrap();
        assert!(!format!("{token:?}").contains("super-secret"));
    }
}
