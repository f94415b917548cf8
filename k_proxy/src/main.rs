#![forbid(unsafe_code)]
//! k_proxy: issues short-lived sessions only after the FIDO2 gate, and forwards
//! bearer-authenticated `/resource/*` calls to k_server over mutual TLS.

mod app;
mod args;
mod config;
mod connect_deadline;
mod enroll;
mod gate_setup;
mod host_allow;
mod metrics;
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
    match run(config, args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k_proxy: {}", chromecard_http::describe_error(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config, args: args::Args) -> anyhow::Result<()> {
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
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (is the port in use? change --port)", config.listen))?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?,
            ),
            None => None,
        };
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %config.listen, "k_proxy listening on {scheme}://{}", config.listen);

        let throttle = Arc::new(throttle::LoginThrottle::new(config.throttle, Arc::new(SystemClock)));
        let metrics = Arc::new(metrics::ProxyMetrics::new(sessions.clone()));
        let sweeper = tokio::spawn(sweep_forever(sessions.clone(), throttle.clone()));
        let admin = admin_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "admin listener: GET /metrics");
            tokio::spawn(serve_metrics(listener, metrics.clone(), config.serve))
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
            upstream: std::sync::RwLock::new(Arc::new(upstream)),
            hosts: std::sync::RwLock::new(Arc::new(config.hosts)),
            max_body_bytes: config.max_body_bytes,
            header_limits: config.header_limits,
            throttle,
            waiting_logins: AtomicUsize::new(0),
            max_waiting_logins: config.max_waiting_logins,
            metrics,
            stopping,
            sockets: Arc::new(ws::Sockets::new(
                ws::SocketLimits {
                    per_session: args.ws_max_per_session,
                    total: args.ws_max_sockets,
                    ping_interval: Duration::from_secs(args.ws_ping_interval),
                    ..ws::SocketLimits::default()
                },
                Arc::new(SystemClock),
            )),
            ui: ui::UiSettings {
                touch_timeout: Duration::from_secs(args.touch_timeout),
            },
        });
        let reloader = tokio::spawn(reload_on_sighup(args, app.clone(), tls.clone()));
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

/// On SIGHUP, reloads the proxy token and every certificate from the same files. New
/// connections and new requests use the new ones; open connections are not dropped. If
/// anything fails to load, everything stays as it was and the error is logged.
async fn reload_on_sighup(
    args: args::Args,
    app: Arc<app::App>,
    tls: Option<chromecard_http::ReloadableTls>,
) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; reload by restarting");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading certificates and the proxy token");
        let reloaded = config::load_reloadable(&args)
            .and_then(|r| Ok((r.tls, upstream::Upstream::new(r.upstream)?, r.hosts)));
        match reloaded {
            Ok((new_tls, new_upstream, new_hosts)) => {
                if let (Some(listener), Some(acceptor)) = (&tls, new_tls) {
                    listener.replace(acceptor);
                }
                app.replace_upstream(new_upstream);
                app.replace_hosts(new_hosts);
                tracing::info!("reload complete");
            }
            Err(err) => tracing::error!(
                error = %chromecard_http::describe_error(err.as_ref()),
                "reload failed; still serving with the previous certificates and token"
            ),
        }
    }
}

/// The admin listener: `GET /metrics` in the Prometheus text format, nothing else.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<metrics::ProxyMetrics>,
    settings: chromecard_http::ServeSettings,
) {
    let handler = move |request: http::Request<chromecard_http::RequestBody>, _conn| {
        let metrics = metrics.clone();
        async move {
            match (request.method(), request.uri().path()) {
                (&http::Method::GET, "/metrics") => {
                    let mut response = http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(metrics.render()),
                    ));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                }
                (_, "/metrics") => {
                    chromecard_http::ApiError::method_not_allowed("GET").into_response()
                }
                _ => chromecard_http::ApiError::not_found().into_response(),
            }
        }
    };
    chromecard_http::serve(
        listener,
        None::<chromecard_http::ReloadableTls>,
        settings,
        handler,
        std::future::pending(),
    )
    .await;
}

/// Removes ended sessions in the background, so memory follows live sessions only, and
/// writes each expiry's audit line. The sweep runs off the async workers.
async fn sweep_forever(sessions: Arc<SessionStore>, throttle: Arc<throttle::LoginThrottle>) {
    let settings = sessions.settings();
    let shortest = settings
        .idle_timeout
        .map_or(settings.ttl, |idle| idle.min(settings.ttl));
    let period = (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let store = sessions.clone();
        let Ok(ended) = tokio::task::spawn_blocking(move || store.sweep()).await else {
            continue;
        };
        for session in &ended {
            app::audit_ended(session);
        }
        throttle.sweep();
        if !ended.is_empty() {
            tracing::debug!(
                removed = ended.len(),
                live = sessions.len(),
                "swept ended sessions"
            );
        }
    }
}
