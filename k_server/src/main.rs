#![forbid(unsafe_code)]
//! k_server: holds the protected resources and answers only k_proxy. A `/resource` request
//! needs a client certificate from the chain CA (checked in the TLS handshake) and the
//! proxy token (checked here, in constant time).

mod app;
mod args;
mod config;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

fn main() -> std::process::ExitCode {
    chromecard_http::init_tracing();
    let args = args::Args::parse();
    let config = match config::make_config(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("k_server: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k_server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (is the port in use? change --port)", config.listen))?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %config.listen, "k_server listening on {scheme}://{}", config.listen);
        let app = Arc::new(app::App::new(config.proxy_token, config.store));
        let handler = move |request, conn| {
            let app = app.clone();
            async move { app.handle(request, conn).await }
        };
        chromecard_http::serve(
            listener,
            config.tls,
            config.serve,
            handler,
            chromecard_http::shutdown_signal(),
        )
        .await;
        tracing::info!("k_server stopped");
        Ok(())
    })
}
