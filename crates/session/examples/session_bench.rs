//! Session store benchmark: memory per live session and validation latency at 1k, 100k
//! and 1M live sessions, and what a full sweep costs (and does to validation meanwhile).
//!
//! Run: `cargo run --release -p chromecard-session --example session_bench`
//! (`-- 1000 100000` to choose the sizes). Linux only (reads /proc/self/statm).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromecard_session::{NewSession, SessionStore, StoreSettings, SystemClock};

/// Tokens kept for validation sampling: few enough not to distort the memory figure.
const SAMPLE_TOKENS: usize = 10_000;
const VALIDATIONS: usize = 200_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let resident: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * 4096
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A small xorshift, so sampling costs nothing and needs no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn validate_latencies(store: &SessionStore, tokens: &[String], count: usize) -> Vec<Duration> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let token = &tokens[(next(&mut rng) % tokens.len() as u64) as usize];
        let started = Instant::now();
        let view = store.validate(token);
        latencies.push(started.elapsed());
        assert!(view.is_ok());
    }
    latencies.sort();
    latencies
}

fn run(size: usize) {
    let store = SessionStore::new(
        StoreSettings {
            ttl: Duration::from_secs(3600),
            idle_timeout: Some(Duration::from_secs(900)),
            max_sessions: size + 1,
        },
        Arc::new(SystemClock),
    );
    let keep_every = (size / SAMPLE_TOKENS).max(1);
    let mut tokens = Vec::with_capacity(SAMPLE_TOKENS + 1);
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..size {
        let issued = store
            .create(NewSession {
                username: format!("user{}", i % 100_000),
                client: Some("127.0.0.1".parse().unwrap()),
                scope: None,
                supersede_others: false,
            })
            .unwrap();
        if i % keep_every == 0 {
            tokens.push(issued.token.expose().to_owned());
        }
    }
    let create_time = started.elapsed();
    let per_session = (rss_bytes().saturating_sub(before)) as f64 / size as f64;

    let latencies = validate_latencies(&store, &tokens, VALIDATIONS);

    // A sweep that finds nothing to remove scans everything: its worst case. Measure it,
    // and validation latency on another thread while it runs.
    let sweeping = Arc::new(AtomicBool::new(true));
    let store = Arc::new(store);
    let tokens = Arc::new(tokens);
    let during = {
        let (store, tokens, sweeping) = (store.clone(), tokens.clone(), sweeping.clone());
        std::thread::spawn(move || {
            let mut all = Vec::new();
            while sweeping.load(Ordering::Relaxed) {
                all.extend(validate_latencies(&store, &tokens, 1000));
            }
            all.sort();
            all
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let sweep_started = Instant::now();
    let swept = store.sweep();
    let sweep_time = sweep_started.elapsed();
    sweeping.store(false, Ordering::Relaxed);
    let during = during.join().unwrap();
    assert!(swept.is_empty());

    println!(
        "| {size:>9} | {:>7.0} B | {:>8.2?} | {:>8.2?} | {:>8.2?} | {:>9.2?} | {:>10.2?} | {:>10.2?} |",
        per_session,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        create_time / size as u32,
        sweep_time,
        if during.is_empty() { Duration::ZERO } else { percentile(&during, 0.50) },
        if during.is_empty() { Duration::ZERO } else { percentile(&during, 0.99) },
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Each size runs in a fresh process, so one size's freed memory cannot hide the next
    // one's growth in the resident-set figure.
    if let [flag, size] = args.as_slice() {
        if flag == "--one" {
            run(size.parse().expect("a whole number"));
            return;
        }
    }
    let sizes: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("sizes are whole numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    println!("| live sessions | memory/session | validate p50 | validate p99 | create (mean) | full sweep | validate p50 during sweep | validate p99 during sweep |");
    println!("|---|---|---|---|---|---|---|---|");
    let me = std::env::current_exe().expect("own path");
    for size in sizes {
        let status = std::process::Command::new(&me)
            .args(["--one", &size.to_string()])
            .status()
            .expect("run one size");
        assert!(status.success());
    }
}
