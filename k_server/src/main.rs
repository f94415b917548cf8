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

/// mimalloc instead of glibc's malloc: each request allocates and frees buffers of
/// several KiB (hyper's header arrays, TLS records), which sends glibc's allocator into
/// `malloc_consolidate` over and over (bench/RESULTS.md, 2026-12-07).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    chromecard_http::init_tracing();
    let args = args::Args::parse();
    let config = match config::make_config(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!(
                "k_server: {}",
                chromecard_http::describe_error(err.as_ref())
            );
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
            eprintln!(
                "k_server: {}",
                chromecard_http::describe_error(err.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config, args: args::Args) -> anyhow::Result<()> {
    // One file per connection, and per event socket, which leaves the connection cap
    // when it upgrades.
    chromecard_http::fit_open_file_limit(config.serve.max_connections + events::MAX_SOCKETS);
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
        // Before anything else: SIGHUP's default action ends the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen} (is the port in use? change --port)")
            })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %listen, "k_server listening on {scheme}://{listen}");
        let tls = tls.map(chromecard_http::ReloadableTls::new);
        let app = Arc::new(app::App::new(proxy_token, store, writer, allow));
        let reloader = tokio::spawn(reload_on_sighup(hangups, args, app.clone(), tls.clone()));
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
        reloader.abort();
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

/// On SIGHUP, reloads the proxy token, the certificate, its key and the client CA from
/// the same files (the --allow-client names are flags, fixed for the process's life). New
/// connections and requests use the new ones; open connections are not dropped. If
/// anything fails to load, everything stays as it was and the error is logged.
async fn reload_on_sighup(
    hangups: Option<tokio::signal::unix::Signal>,
    args: args::Args,
    app: Arc<app::App>,
    tls: Option<chromecard_http::ReloadableTls>,
) {
    let Some(mut hangups) = hangups else {
        tracing::warn!("cannot listen for SIGHUP; reload by restarting");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading certificates and the proxy token");
        match config::load_reloadable(&args) {
            Ok(reloaded) => {
                if let (Some(listener), Some(acceptor)) = (&tls, reloaded.tls) {
                    listener.replace(acceptor);
                }
                app.replace_proxy_token(reloaded.proxy_token);
                tracing::info!("reload complete");
            }
            Err(err) => tracing::error!(
                error = %chromecard_http::describe_error(err.as_ref()),
                "reload failed; still serving with the previous certificates and token"
            ),
        }
    }
}
