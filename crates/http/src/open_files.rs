//! The open-file limit against `--max-connections`: every connection is a file, so a
//! limit below the connections the flags allow would turn the cap's clean refusal at
//! accept into `accept` failing in a loop (and k_proxy unable to reach k_server). The
//! soft limit is raised as far as needed and the hard limit allows; what still does not
//! fit is said at start-up.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Files beside the connections: listeners, the log, the store, the key, sockets to
/// k_server that outlive their requests in the pool.
const RESERVE: u64 = 256;

/// What the soft limit should become: enough for `needed` if the hard limit allows it,
/// never lower than it is.
fn target(needed: u64, current: u64, maximum: Option<u64>) -> u64 {
    let ceiling = maximum.unwrap_or(u64::MAX);
    current.max(needed.min(ceiling))
}

/// Raises the open-file limit for `connection_files` (the most files the connection
/// caps allow: the caller counts each kind of connection it serves, and the files each
/// holds) plus a reserve, and warns when it cannot.
pub fn fit_open_file_limit(connection_files: usize) {
    let needed = (connection_files as u64).saturating_add(RESERVE);
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return; // unlimited
    };
    let wanted = target(needed, current, limit.maximum);
    let now = if wanted > current {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            },
        ) {
            Ok(()) => {
                tracing::info!(
                    from = current,
                    to = wanted,
                    "raised the open-file limit for the connection caps"
                );
                wanted
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not raise the open-file limit");
                current
            }
        }
    } else {
        current
    };
    if now < needed {
        tracing::warn!(
            connection_files,
            needed,
            limit = now,
            hard_limit = ?limit.maximum,
            "the connection caps (--max-connections, and the WebSocket caps) allow more connections than open files: past the limit, accept fails instead of refusing cleanly; raise the limit (LimitNOFILE= in the unit, or ulimit -n) or lower the caps"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn the_soft_limit_rises_as_far_as_needed_and_allowed_and_never_falls() {
        assert_eq!(target(2304, 1024, Some(524_288)), 2304);
        assert_eq!(target(2304, 1024, Some(2000)), 2000);
        assert_eq!(target(2304, 1024, None), 2304);
        assert_eq!(target(500, 1024, Some(524_288)), 1024);
    }
}
