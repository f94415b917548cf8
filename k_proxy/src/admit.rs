//! Phase 1, admit: what a request must be before any room looks at it. The head's
//! size, the request target's length, and the Host allow-list (host_allow/), which
//! keeps a DNS-rebinding page from reaching k_proxy under a name of its choosing.

use chromecard_http::{check_header_limits, ApiError, ConnInfo, HeaderLimits, RequestBody};
use http::{Request, StatusCode};

use crate::host_allow::{self, AllowedHosts, Authority};
use crate::metrics::ProxyMetrics;

/// Longest request target (path and query, with the authority of an absolute-form
/// target) k_proxy takes; k_server then never sees a longer one.
const MAX_TARGET_BYTES: usize = 8 * 1024;

/// The head's bounds: header count and size, and the target's length.
pub fn head(request: &Request<RequestBody>, limits: HeaderLimits) -> Result<(), ApiError> {
    check_header_limits(request.headers(), limits)?;
    check_target_length(request.uri())
}

/// 414 JSON for a request target over [`MAX_TARGET_BYTES`]. (Beyond hyper's read buffer,
/// 64 KiB or twice --max-header-bytes, hyper itself refuses the head before we see it.)
fn check_target_length(uri: &http::Uri) -> Result<(), ApiError> {
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if length > MAX_TARGET_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "The request target is {length} bytes; k_proxy takes at most {MAX_TARGET_BYTES}."
            ),
        ));
    }
    Ok(())
}

/// Who a request is for: the allowed hosts, and the admitted host it named (`None` for
/// the health probes, which answer any name). The cookie's CSRF check compares `Origin`
/// with this, never with the client's own `Host`.
pub struct Site {
    pub hosts: std::sync::Arc<AllowedHosts>,
    pub addressed: Option<Authority>,
}

impl Site {
    /// Whether a browser's `Origin` names this k_proxy, by the host this request was
    /// addressed to and the listener's scheme.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.hosts.allows_origin(origin, self.addressed.as_ref())
    }
}

/// The Host allow-list; a refusal is logged and counted here.
pub fn host(
    hosts: &AllowedHosts,
    request: &Request<RequestBody>,
    conn: &ConnInfo,
    metrics: &ProxyMetrics,
) -> Result<Option<Authority>, ApiError> {
    host_allow::admit(hosts, request.version(), request.uri(), request.headers()).map_err(
        |refusal| {
            let host = request.headers().get(http::header::HOST);
            tracing::warn!(
                peer = %conn.peer,
                code = refusal.code(),
                host = ?host,
                uri_authority = ?request.uri().authority().map(|a| a.as_str()),
                "refused a request for a host k_proxy does not serve ({refusal}); a DNS-rebinding page would look like this; allow a real name with --allowed-host"
            );
            metrics.host_refused.inc(refusal.code());
            refusal.to_api_error()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_are_bounded() {
        let at = |n: usize| {
            format!("/resource/{}", "a".repeat(n - 10))
                .parse::<http::Uri>()
                .unwrap()
        };
        assert!(check_target_length(&at(MAX_TARGET_BYTES)).is_ok());
        let err = check_target_length(&at(MAX_TARGET_BYTES + 1)).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (414, "uri_too_long"));
    }
}
