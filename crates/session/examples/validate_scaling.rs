//! Does validation scale with worker threads? The hot path of every forwarded request is
//! `SessionStore::validate` (SHA-256 of the token, one shard read lock of a 128-shard map,
//! an atomic idle-clock update). If it took a global lock, two threads would validate no
//! faster than one.
//!
//! Fills a store with live sessions, then for 1 and 2 threads (and more if asked) runs
//! `validate` in a tight loop for a fixed time on each thread and reports the total rate
//! and the speed-up over one thread, in two cases:
//! - distinct tokens: each thread validates its own random live tokens (many users);
//! - one shared token: every thread validates the same token (the benchmark's single
//!   session: one record, one shard, so the worst case for contention).
//!
//! Run: `cargo run --release -p chromecard-session --example validate_scaling`
//! (`-- --sessions 100000 --seconds 2 --threads 1,2`). Prints a Markdown table.
//! The speed-up can only approach N on a machine with N idle cores.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chromecard_session::{NewSession, SessionStore, StoreSettings, SystemClock};

/// A small xorshift, so picking a token costs nothing and needs no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Validations per second with `threads` threads for `run_for`.
fn rate(
    store: &Arc<SessionStore>,
    tokens: &Arc<Vec<String>>,
    shared: bool,
    threads: usize,
    run_for: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (store, tokens, stop, total, start) = (
                store.clone(),
                tokens.clone(),
                stop.clone(),
                total.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((t as u64 + 1) << 32);
                let mut done = 0u64;
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    // Check the flag every 256 validations: cheap, and still prompt.
                    for _ in 0..256 {
                        let token = if shared {
                            &tokens[0]
                        } else {
                            &tokens[(next(&mut rng) % tokens.len() as u64) as usize]
                        };
                        let view = store.validate(token).expect("a live token");
                        std::hint::black_box(view);
                    }
                    done += 256;
                }
                total.fetch_add(done, Ordering::Relaxed);
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    total.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let mut sessions = 100_000usize;
    let mut seconds = 2.0f64;
    let mut thread_counts = vec![1usize, 2];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--sessions" => sessions = value.parse().expect("--sessions N"),
            "--seconds" => seconds = value.parse().expect("--seconds S"),
            "--threads" => {
                thread_counts = value
                    .split(',')
                    .map(|n| n.parse().expect("--threads 1,2"))
                    .collect()
            }
            _ => panic!("unknown flag {flag} (--sessions N, --seconds S, --threads 1,2)"),
        }
    }
    let sessions = sessions.max(1);
    let store = SessionStore::new(
        StoreSettings {
            ttl: Duration::from_secs(3600),
            idle_timeout: Some(Duration::from_secs(900)),
            max_sessions: sessions + 1,
        },
        Arc::new(SystemClock),
    );
    let mut tokens = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let issued = store
            .create(NewSession {
                username: format!("user{}", i % 10_000),
                client: Some("127.0.0.1".parse().unwrap()),
                scope: None,
                supersede_others: false,
            })
            .expect("create");
        tokens.push(issued.token.expose().to_owned());
    }
    let store = Arc::new(store);
    let tokens = Arc::new(tokens);
    let run_for = Duration::from_secs_f64(seconds);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    println!(
        "{sessions} live sessions, {seconds} s per point, {cores} cores available to this process"
    );
    println!();
    println!("| tokens | threads | validations/s | per thread | speed-up vs 1 thread |");
    println!("|---|---|---|---|---|");
    for (label, shared) in [("distinct", false), ("one shared", true)] {
        // A short warm-up so that the first point does not pay for cold caches.
        rate(&store, &tokens, shared, 1, Duration::from_millis(200));
        // The rate of one thread: the first point, scaled if it used more than one.
        let mut one_thread = None;
        for &threads in &thread_counts {
            let per_second = rate(&store, &tokens, shared, threads, run_for);
            let one = *one_thread.get_or_insert(per_second / threads as f64);
            println!(
                "| {label} | {threads} | {per_second:.0} | {:.0} | {:.2}x |",
                per_second / threads as f64,
                per_second / one,
            );
        }
    }
}
