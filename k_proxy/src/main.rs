#![forbid(unsafe_code)]
//! k_proxy: issues short-lived sessions only after the FIDO2 gate, and forwards
//! bearer-authenticated `/resource/*` calls to k_server over mutual TLS.

mod admin;
mod admit;
mod app;
mod args;
mod authenticate;
mod authorise;
mod config;
mod connect_deadline;
mod enroll;
mod enroll_pin;
mod forward;
mod gate_setup;
mod host_allow;
mod log;
mod login;
mod metrics;
mod probes;
mod reload;
mod respond;
mod rewrite;
mod route;
mod session_api;
mod session_writes;
mod sweeper;
mod throttle;
mod ui;
mod upstream;
mod ws;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chromecard_session::{SessionStore, SystemClock};
use clap::Parser;

/// mimalloc instead of glibc's malloc: each request allocates and frees buffers of
/// several KiB (hyper's header arrays, TLS records), which sends glibc's allocator into
/// `malloc_consolidate` over and over (bench/RESULTS.md, 2026-12-07).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    chromecard_http::init_tracing();
    let mut args = args::Args::parse();
    if let Some(command) = args.command.take() {
        return enroll::run(&args, command);
    }
    let config = match config::make_config(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("k_proxy: {}", chromecard_http::describe_error(err.as_ref()));
            return std::process::ExitCode::from(2);
        }
    };
    // From here on, log lines reach stderr through one writer thread (log_writer.rs);
    // stop() writes out the last of them before the process exits or prints its error.
    chromecard_http::log_writer::start();
    let result = run(config, args);
    chromecard_http::log_writer::stop();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k_proxy: {}", chromecard_http::describe_error(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config, args: args::Args) -> anyhow::Result<()> {
    // Two files per client connection (it and the one to k_server it borrows), and two
    // per WebSocket, which leaves the connection cap when it upgrades; the admin
    // listener's connections are served under their own cap.
    let admin = if config.admin_listen.is_some() {
        config.serve.max_connections
    } else {
        0
    };
    chromecard_http::fit_open_file_limit(
        (config.serve.max_connections + args.ws_max_sockets) * 2 + admin,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        // Everything that can refuse the configuration runs before we listen.
        let upstream = upstream::Upstream::new(config.upstream)?;
        let mut sessions = SessionStore::new(config.sessions, Arc::new(SystemClock));
        if let Some(file) = config.session_store {
            sessions = sessions.with_persistence(file)?;
        }
        let sessions = Arc::new(sessions);
        let (listener, admin_listener) = bind(config.listen, config.admin_listen).await?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %config.listen, "k_proxy listening on {scheme}://{}", config.listen);

        let throttle = Arc::new(throttle::LoginThrottle::new(config.throttle, Arc::new(SystemClock)));
        let metrics = Arc::new(metrics::ProxyMetrics::new(sessions.clone()));
        let sweeper = tokio::spawn(sweeper::sweep_forever(sessions.clone(), throttle.clone()));
        let admin = admin_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "admin listener: GET /metrics");
            tokio::spawn(admin::serve_metrics(listener, metrics.clone(), config.serve))
        });
        let tls = config.tls.map(chromecard_http::ReloadableTls::new);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            chromecard_http::shutdown_signal().await;
            let _ = stop.send(true);
        };
        let app = Arc::new(app::App {
            sessions,
            policy: app::SessionPolicy {
                supersede_on_login: config.supersede_on_login,
            },
            gate: config.gate,
            upstream: chromecard_http::Slot::new(upstream),
            hosts: chromecard_http::Slot::new(config.hosts),
            max_body_bytes: config.max_body_bytes,
            header_limits: config.header_limits,
            throttle,
            waiting_logins: AtomicUsize::new(0),
            max_waiting_logins: config.max_waiting_logins,
            metrics,
            stopping,
            sockets: event_sockets(&args),
            ui: ui::UiSettings {
                touch_timeout: Duration::from_secs(args.touch_timeout),
            },
        });
        let reloader = tokio::spawn(reload::reload_on_sighup(args, app.clone(), tls.clone()));
        let handler = move |request, conn| {
            let app = app.clone();
            async move { app.handle(request, conn).await }
        };
        chromecard_http::serve(listener, tls, config.serve, handler, shutdown).await;
        reloader.abort();
        sweeper.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        tracing::info!("k_proxy stopped");
        Ok(())
    });
    // A key operation stuck in a blocking read must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The client listener and, with --admin-listen, the admin one; bound before anything
/// starts, so a taken port refuses the start.
async fn bind(
    listen: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (is the port in use? change --port)")
        })?;
    let admin = match admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?,
        ),
        None => None,
    };
    Ok((listener, admin))
}

/// The WebSocket tickets and sockets, bounded by the --ws-* flags.
fn event_sockets(args: &args::Args) -> Arc<ws::Sockets> {
    Arc::new(ws::Sockets::new(
        ws::SocketLimits {
            per_session: args.ws_max_per_session,
            total: args.ws_max_sockets,
            ping_interval: Duration::from_secs(args.ws_ping_interval),
            ..ws::SocketLimits::default()
        },
        Arc::new(SystemClock),
    ))
}
