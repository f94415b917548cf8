#![forbid(unsafe_code)]
//! Just enough metrics for an operator: counters, labelled counters, gauges read on demand
//! and histograms, all on atomics so that recording never takes a lock on the hot path
//! (a labelled counter takes a read lock only to find an existing label), rendered in the
//! Prometheus text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Something that can write its samples under a metric name.
trait Render: Send + Sync {
    fn kind(&self) -> &'static str;
    fn render(&self, name: &str, out: &mut String);
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Render for Counter {
    fn kind(&self) -> &'static str {
        "counter"
    }
    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "{name} {}", self.get());
    }
}

/// Counts per value of one label (e.g. `outcome`, `status`).
#[derive(Debug)]
pub struct LabeledCounter {
    label: &'static str,
    values: RwLock<BTreeMap<String, Arc<AtomicU64>>>,
}

impl LabeledCounter {
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            values: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, value: &str) {
        // Counted under the read guard: no clone of the Arc, whose reference count would
        // be two more atomic writes to a line every worker shares.
        if let Ok(values) = self.values.read() {
            if let Some(counter) = values.get(value) {
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut values) = self.values.write() {
            values
                .entry(value.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, value: &str) -> u64 {
        self.values
            .read()
            .ok()
            .and_then(|v| v.get(value).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

impl Render for LabeledCounter {
    fn kind(&self) -> &'static str {
        "counter"
    }
    fn render(&self, name: &str, out: &mut String) {
        let Ok(values) = self.values.read() else {
            return;
        };
        for (value, count) in values.iter() {
            let _ = writeln!(
                out,
                "{name}{{{}=\"{}\"}} {}",
                self.label,
                escape(value),
                count.load(Ordering::Relaxed)
            );
        }
    }
}

/// A value read when the metrics are scraped (e.g. live sessions).
pub struct Gauge(Box<dyn Fn() -> f64 + Send + Sync>);

impl Gauge {
    pub fn new(read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl Render for Gauge {
    fn kind(&self) -> &'static str {
        "gauge"
    }
    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "{name} {}", (self.0)());
    }
}

/// A latency histogram with fixed upper bounds in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// Bounds for network round trips: 0.5 ms to 10 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bounds for a person touching a key: 10 ms to 60 s.
pub const TOUCH_BOUNDS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // Buckets are cumulative in the exposition; store per-bucket and sum when rendering.
        if let Some(i) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Render for Histogram {
    fn kind(&self) -> &'static str {
        "histogram"
    }
    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        // observe() counts after its bucket: a scrape between the two must still show
        // +Inf no lower than the last bucket (Prometheus reads a drop as a reset).
        let count = self.count().max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The set of metrics a process exposes, in registration order.
#[derive(Default)]
pub struct Registry {
    metrics: Vec<(&'static str, &'static str, Arc<dyn Render>)>,
}

impl Registry {
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> Arc<Counter> {
        self.add(name, help, Counter::default())
    }

    pub fn labeled_counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
    ) -> Arc<LabeledCounter> {
        self.add(name, help, LabeledCounter::new(label))
    }

    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.add(name, help, Gauge::new(read));
    }

    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        self.add(name, help, Histogram::new(bounds))
    }

    fn add<M: Render + 'static>(
        &mut self,
        name: &'static str,
        help: &'static str,
        metric: M,
    ) -> Arc<M> {
        let metric = Arc::new(metric);
        self.metrics.push((name, help, metric.clone()));
        metric
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, metric) in &self.metrics {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {}", metric.kind());
            metric.render(name, &mut out);
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let mut registry = Registry::default();
        let logins = registry.labeled_counter("logins_total", "Logins by outcome.", "outcome");
        let requests = registry.counter("requests_total", "Requests.");
        registry.gauge("live", "Live sessions.", || 3.0);
        let latency = registry.histogram("latency_seconds", "Latency.", &[0.1, 1.0]);
        logins.inc("ok");
        logins.inc("ok");
        logins.inc("no_key");
        requests.inc();
        latency.observe(Duration::from_millis(50));
        latency.observe(Duration::from_millis(500));
        latency.observe(Duration::from_secs(5));
        let text = registry.render();
        for line in [
            "# TYPE logins_total counter",
            "logins_total{outcome=\"no_key\"} 1",
            "logins_total{outcome=\"ok\"} 2",
            "requests_total 1",
            "# TYPE live gauge",
            "live 3",
            "latency_seconds_bucket{le=\"0.1\"} 1",
            "latency_seconds_bucket{le=\"1\"} 2",
            "latency_seconds_bucket{le=\"+Inf\"} 3",
            "latency_seconds_sum 5.55",
            "latency_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let counter = LabeledCounter::new("l");
        counter.inc("a\"b");
        let mut out = String::new();
        counter.render("m", &mut out);
        assert_eq!(out, "m{l=\"a\\\"b\"} 1\n");
    }
}
