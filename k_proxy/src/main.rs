#![forbid(unsafe_code)]
//! k_proxy: issues short-lived sessions only after the FIDO2 gate, and forwards
//! bearer-authenticated `/resource/*` calls to k_server over mutual TLS.

mod app;
mod args;
mod config;
mod credential;
mod login;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chromecard_session::{SessionStore, SystemClock};
use clap::Parser;

fn main() -> std::process::ExitCode {
    chromecard_http::init_tracing();
    let args = args::Args::parse();
    let config = match config::make_config(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("k_proxy: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k_proxy: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        // Everything that can refuse the configuration runs before we listen.
        let upstream = upstream::Upstream::new(config.upstream)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (is the port in use? change --port)", config.listen))?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %config.listen, "k_proxy listening on {scheme}://{}", config.listen);

        let sessions = Arc::new(SessionStore::new(config.sessions, Arc::new(SystemClock)));
        let sweeper = tokio::spawn(sweep_forever(sessions.clone()));
        let app = Arc::new(app::App::new(sessions, config.gate, upstream, config.max_body_bytes));
        let handler = move |request, conn| {
            let app = app.clone();
            async move { app.handle(request, conn).await }
        };
        chromecard_http::serve(listener, config.tls, config.serve, handler, chromecard_http::shutdown_signal()).await;
        sweeper.abort();
        tracing::info!("k_proxy stopped");
        Ok(())
    });
    // A key operation stuck in a blocking read must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Drops expired sessions in the background so memory follows live sessions only.
async fn sweep_forever(sessions: Arc<SessionStore>) {
    let period = sessions
        .settings()
        .ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let removed = sessions.sweep();
        if removed > 0 {
            tracing::debug!(removed, live = sessions.len(), "swept expired sessions");
        }
    }
}
