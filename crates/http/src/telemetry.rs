//! Logs go to stderr, filtered by `RUST_LOG` (default `info`). Never log a secret: tokens,
//! keys and the proxy token are not `Display`ed anywhere in this workspace. A server
//! writes them through a buffer and a writer thread (log_writer.rs) once it calls
//! [`crate::log_writer::start`].

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::log_writer::LogWriter;

/// Set when our subscriber is the global one and writes plain text (no ANSI colours):
/// then the access line may be written without going through tracing's formatter, in
/// exactly the text that formatter would give it (access.rs).
static PLAIN_TEXT: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber once; later calls do nothing.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_target(false)
        .with_ansi(ansi)
        .try_init()
        .is_ok();
    if installed && !ansi {
        PLAIN_TEXT.store(true, Ordering::Relaxed);
    }
}

/// Whether lines are written as plain text by the subscriber [`init_tracing`] installed.
pub(crate) fn plain_text() -> bool {
    PLAIN_TEXT.load(Ordering::Relaxed)
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
