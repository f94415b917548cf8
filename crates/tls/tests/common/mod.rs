//! Shared helpers for the integration tests: certificate sets made by the real
//! `tls/make-certs.sh`, an in-memory TLS handshake, and a tiny tracing collector.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

const FIXTURE_PREFIX: &str = "chromecard-tls-fixture-";

/// `tls/make-certs.sh`, found from this crate's manifest directory.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tls/make-certs.sh")
}

/// Runs the script with `args`, from an unrelated working directory (it must not care).
pub fn run_script(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("tls/make-certs.sh can be executed (is it executable and is bash installed?)")
}

/// One directory written by `make-certs.sh`.
pub struct CertSet {
    pub dir: PathBuf,
}

impl CertSet {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }
    pub fn server_crt(&self) -> PathBuf {
        self.path("k_server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.path("k_server.key")
    }
    pub fn proxy_crt(&self) -> PathBuf {
        self.path("k_proxy.crt")
    }
    pub fn proxy_key(&self) -> PathBuf {
        self.path("k_proxy.key")
    }
}

/// A fresh directory under cargo's per-target temp dir, for files a test makes itself.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("chromecard-tls-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temp dir")
}

/// Generates a certificate set with the real script into `dir/out`.
pub fn generate(dir: &Path, extra: &[&str]) -> CertSet {
    let out = dir.join("out");
    let out_str = out.to_str().expect("utf-8 temp path");
    let mut args = vec!["--out", out_str];
    args.extend_from_slice(extra);
    let output = run_script(&args);
    assert!(
        output.status.success(),
        "make-certs.sh failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    CertSet { dir: out }
}

/// Certificate sets shared by all tests of one binary. Statics are never dropped, so they
/// live in cargo's target tmp dir, and sets older than an hour are swept on the next run.
fn shared(slot: &'static OnceLock<(tempfile::TempDir, CertSet)>) -> &'static CertSet {
    &slot
        .get_or_init(|| {
            sweep_stale_fixtures();
            let root = tempfile::Builder::new()
                .prefix(FIXTURE_PREFIX)
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("create a fixture dir");
            let set = generate(root.path(), &[]);
            (root, set)
        })
        .1
}

/// Our chain: CA, k_server and k_proxy.
pub fn ours() -> &'static CertSet {
    static SLOT: OnceLock<(tempfile::TempDir, CertSet)> = OnceLock::new();
    shared(&SLOT)
}

/// An independent chain made the same way: the "foreign CA" an attacker could have.
pub fn foreign() -> &'static CertSet {
    static SLOT: OnceLock<(tempfile::TempDir, CertSet)> = OnceLock::new();
    shared(&SLOT)
}

fn sweep_stale_fixtures() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_string_lossy()
            .starts_with(FIXTURE_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Which side of an in-memory handshake refused, and why.
#[derive(Debug)]
pub enum Refused {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Moves every pending TLS record from `from` to `to`.
fn pipe<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write to a Vec");
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        match to.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Runs a full handshake in memory, then sends one request and one answer across it.
pub fn handshake(
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
    server_name: ServerName<'static>,
) -> Result<(ClientConnection, ServerConnection), Refused> {
    let mut client = ClientConnection::new(client_config, server_name).expect("client connection");
    let mut server = ServerConnection::new(server_config).expect("server connection");
    for _ in 0..16 {
        pipe(&mut client, &mut server);
        if let Err(e) = server.process_new_packets() {
            // Deliver the server's alert so the client sees the refusal too.
            pipe(&mut server, &mut client);
            let _ = client.process_new_packets();
            return Err(Refused::Server(e));
        }
        pipe(&mut server, &mut client);
        if let Err(e) = client.process_new_packets() {
            pipe(&mut client, &mut server);
            let _ = server.process_new_packets();
            return Err(Refused::Client(e));
        }
        let settled = !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write();
        if settled {
            exchange(&mut client, &mut server)?;
            return Ok((client, server));
        }
    }
    panic!("handshake did not settle");
}

/// Application data both ways; with TLS 1.3 client auth this is where a server that
/// rejected the client certificate after the client's Finished is noticed at the latest.
fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Refused> {
    client
        .writer()
        .write_all(b"GET /healthz")
        .expect("buffer plaintext");
    pipe(client, server);
    let state = server.process_new_packets().map_err(Refused::Server)?;
    let mut got = vec![0u8; state.plaintext_bytes_to_read()];
    server
        .reader()
        .read_exact(&mut got)
        .expect("read plaintext");
    assert_eq!(got, b"GET /healthz");

    server
        .writer()
        .write_all(b"200 OK")
        .expect("buffer plaintext");
    pipe(server, client);
    let state = client.process_new_packets().map_err(Refused::Client)?;
    let mut got = vec![0u8; state.plaintext_bytes_to_read()];
    client
        .reader()
        .read_exact(&mut got)
        .expect("read plaintext");
    assert_eq!(got, b"200 OK");
    Ok(())
}

/// Counts WARN events emitted while `f` runs on this thread.
pub fn count_warnings<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let collector = WarnCounter::default();
    let count = collector.0.clone();
    let value = tracing::subscriber::with_default(collector, f);
    let n = count.load(Ordering::SeqCst);
    (value, n)
}

#[derive(Default)]
struct WarnCounter(Arc<AtomicUsize>);

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
