//! Logs go to stderr, filtered by `RUST_LOG` (default `info`). Never log a secret: tokens,
//! keys and the proxy token are not `Display`ed anywhere in this workspace.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// One line for an error and its causes, for the binaries' edge and for logs. Causes whose
/// text the message already contains are skipped: many of our errors say their cause in
/// their own sentence and also expose it as `source()`.
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x: {source}")]
    struct SaysItsCause {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("--flag /x")]
    struct Context {
        source: SaysItsCause,
    }

    #[test]
    fn each_cause_once() {
        let err = Context {
            source: SaysItsCause {
                source: std::io::Error::other("gone"),
            },
        };
        assert_eq!(describe_error(&err), "--flag /x: cannot read /x: gone");
    }
}
