//! The SIGHUP reloader: certificates, the proxy token and the Host allow-list from the
//! same files, all or nothing.

use std::sync::Arc;

use crate::app::App;
use crate::args::Args;
use crate::{config, upstream};

/// On SIGHUP, reloads the proxy token and every certificate from the same files. New
/// connections and new requests use the new ones; open connections are not dropped. If
/// anything fails to load, everything stays as it was and the error is logged.
pub async fn reload_on_sighup(
    args: Args,
    app: Arc<App>,
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
                app.upstream.replace(new_upstream);
                app.hosts.replace(new_hosts);
                tracing::info!("reload complete");
            }
            Err(err) => tracing::error!(
                error = %chromecard_http::describe_error(err.as_ref()),
                "reload failed; still serving with the previous certificates and token"
            ),
        }
    }
}
