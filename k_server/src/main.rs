#![forbid(unsafe_code)]
//! k_server: holds the protected resources and answers only k_proxy. A `/resource` request
//! needs a client certificate from the chain CA (checked in the TLS handshake) and the
//! proxy token (checked here, in constant time).

mod app;
mod args;
mod config;
mod events;
mod peer;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

fn main() -> std::process::ExitCode {
    chromecard_http::init_tracing();
    let args = args::Args::parse();
    let config = match config::make_config(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!(
                "k_server: {}",
                chromecard_http::describe_error(err.as_ref())
            );
            return std::process::ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "k_server: {}",
                chromecard_http::describe_error(err.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let config::Config {
        listen,
        tls,
        proxy_token,
        store,
        writer,
        writer_thread,
        allow,
        serve,
    } = config;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen} (is the port in use? change --port)")
            })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %listen, "k_server listening on {scheme}://{listen}");
        let app = Arc::new(app::App::new(proxy_token, store, writer, allow));
        let handler = move |request, conn| {
            let app = app.clone();
            async move { app.handle(request, conn).await }
        };
        chromecard_http::serve(
            listener,
            tls,
            serve,
            handler,
            chromecard_http::shutdown_signal(),
        )
        .await;
        Ok(())
    });
    // Dropping the runtime drops every connection (and its handle on the writer);
    // the writer then commits what is queued and stops, and the store closes cleanly.
    drop(runtime);
    let (transactions, writes) = writer_thread.join();
    tracing::info!(
        transactions,
        writes,
        "store writer stopped: {writes} writes committed in {transactions} durable transactions"
    );
    tracing::info!("k_server stopped");
    served
}
