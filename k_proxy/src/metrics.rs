//! What k_proxy tells its operator on the opt-in admin listener (`--admin-listen`).

use std::sync::Arc;

use chromecard_metrics::{Histogram, LabeledCounter, Registry, LATENCY_BOUNDS, TOUCH_BOUNDS};
use chromecard_session::SessionStore;

pub struct ProxyMetrics {
    registry: Registry,
    /// Logins by outcome: "ok" or the error code the client got.
    pub logins: Arc<LabeledCounter>,
    /// Forwarded /resource requests by the status the client got.
    pub forwarded: Arc<LabeledCounter>,
    /// Requests k_server answered, by the protocol of the hop (`--upstream-http2`).
    pub upstream_protocol: Arc<LabeledCounter>,
    pub upstream_latency: Arc<Histogram>,
    pub gate_latency: Arc<Histogram>,
    /// Requests refused before routing for their Host, by error code.
    pub host_refused: Arc<LabeledCounter>,
}

impl ProxyMetrics {
    pub fn new(sessions: Arc<SessionStore>) -> Self {
        let mut registry = Registry::default();
        let logins = registry.labeled_counter(
            "chromecard_logins_total",
            "Login attempts by outcome (ok, or the error code returned).",
            "outcome",
        );
        let live = sessions.clone();
        registry.gauge(
            "chromecard_sessions_live",
            "Sessions currently held (ended ones until the next sweep).",
            move || live.len() as f64,
        );
        registry.gauge(
            "chromecard_sessions_undeleted",
            "Ended sessions the --session-store file still holds because removing them failed (retried at every sweep).",
            move || sessions.undeleted_len() as f64,
        );
        let forwarded = registry.labeled_counter(
            "chromecard_forwarded_requests_total",
            "Requests to /resource/* by the HTTP status returned to the client.",
            "status",
        );
        let upstream_protocol = registry.labeled_counter(
            "chromecard_upstream_requests_total",
            "Forwarded requests k_server answered, by the protocol they went over (http/1.1, h2).",
            "protocol",
        );
        let upstream_latency = registry.histogram(
            "chromecard_upstream_latency_seconds",
            "Time from forwarding a request to k_server to having its whole answer.",
            LATENCY_BOUNDS,
        );
        let gate_latency = registry.histogram(
            "chromecard_gate_latency_seconds",
            "Time one login spent at the gate (waiting for and using the key).",
            TOUCH_BOUNDS,
        );
        let host_refused = registry.labeled_counter(
            "chromecard_host_refused_total",
            "Requests refused for their Host (a DNS-rebinding guard), by error code.",
            "code",
        );
        Self {
            registry,
            logins,
            forwarded,
            upstream_protocol,
            upstream_latency,
            gate_latency,
            host_refused,
        }
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }
}
