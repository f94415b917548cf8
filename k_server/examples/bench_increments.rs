//! Load generator for `scripts/bench-store.sh`: N concurrent clients, each on its own
//! keep-alive HTTP/1.1 connection, send `POST /resource/counter` to k_server as k_proxy
//! would (proxy token and user headers) for a fixed time, and report durable increments
//! per second. Every answer's counter value is checked to be distinct.
//!
//! ```text
//! CHROMECARD_PROXY_TOKEN=... bench_increments --port 8780 --clients 64 --seconds 5
//! ```
//! Output: one line, `clients=64 seconds=5.00 ok=... errors=... rate=.../s p50_ms=... p99_ms=...`.
//! Plain HTTP only (k_server without --tls-certfile). The clients are tasks on ONE
//! thread (a current-thread tokio runtime), so that the load generator takes as little
//! of the machine's CPU from k_server as it can.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
struct Options {
    port: u16,
    clients: usize,
    seconds: f64,
    user: String,
    token: String,
}

fn options() -> Result<Options, String> {
    let mut opts = Options {
        port: 8780,
        clients: 1,
        seconds: 5.0,
        user: "bench".into(),
        token: std::env::var("CHROMECARD_PROXY_TOKEN")
            .map_err(|_| "set CHROMECARD_PROXY_TOKEN to k_server's proxy token".to_string())?,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--port" => opts.port = value.parse().map_err(|e| bad(&e))?,
            "--clients" => opts.clients = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => opts.seconds = value.parse().map_err(|e| bad(&e))?,
            "--user" => opts.user = value,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --port --clients --seconds --user"
                ))
            }
        }
    }
    if opts.clients == 0 || opts.seconds <= 0.0 {
        return Err("--clients and --seconds must be positive".into());
    }
    Ok(opts)
}

/// One keep-alive connection.
struct Conn {
    stream: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            line: String::new(),
        })
    }

    /// Sends one increment; (status, body).
    async fn increment(&mut self, request: &[u8]) -> std::io::Result<(u16, String)> {
        self.stream.get_mut().write_all(request).await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {:?}", self.line)))?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn counter_of(body: &str) -> Option<u64> {
    let rest = &body[body.find("\"counter\":")? + "\"counter\":".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One client until `deadline`: (counter values, latencies, errors).
async fn client(port: u16, request: Vec<u8>, deadline: Instant) -> (Vec<u64>, Vec<Duration>, u64) {
    let mut values = Vec::new();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut conn = None;
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(port).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t = Instant::now();
        match c.increment(&request).await {
            Ok((200, body)) => match counter_of(&body) {
                Some(v) => {
                    values.push(v);
                    latencies.push(t.elapsed());
                }
                None => errors += 1,
            },
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
    }
    (values, latencies, errors)
}

fn main() {
    let opts = match options() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("bench_increments: {e}");
            std::process::exit(2);
        }
    };
    let request = format!(
        "POST /resource/counter HTTP/1.1\r\nHost: k_server\r\nX-Proxy-Token: {}\r\nX-Chromecard-User: {}\r\nContent-Length: 0\r\n\r\n",
        opts.token, opts.user
    )
    .into_bytes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.seconds);
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..opts.clients)
            .map(|_| tokio::spawn(client(opts.port, request.clone(), deadline)))
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.expect("client task"));
        }
        results
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut values = Vec::new();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (v, l, e) in results {
        values.extend(v);
        latencies.extend(l);
        errors += e;
    }
    let distinct: HashSet<_> = values.iter().collect();
    if distinct.len() != values.len() {
        eprintln!(
            "bench_increments: DUPLICATE counter values: {} answers, {} distinct",
            values.len(),
            distinct.len()
        );
        std::process::exit(1);
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "clients={} seconds={:.2} ok={} errors={} rate={:.0}/s p50_ms={:.2} p99_ms={:.2}",
        opts.clients,
        elapsed,
        values.len(),
        errors,
        values.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
