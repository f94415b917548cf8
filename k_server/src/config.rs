//! Turns the flags into a checked configuration. Every refusal names the flag and the fix.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use chromecard_hop::ProxyToken;
use chromecard_http::ServeSettings;
use chromecard_store::{CommitMode, Store, Writer, WriterThread};
use chromecard_tls::ClientAuth;
use tokio_rustls::TlsAcceptor;

use crate::args::{Args, CommitModeArg};
use crate::peer::AllowList;

pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub proxy_token: ProxyToken,
    pub store: Arc<Store>,
    /// The group-commit queue (every write goes through it) and its thread.
    pub writer: Writer,
    pub writer_thread: WriterThread,
    pub allow: AllowList,
    pub serve: ServeSettings,
}

pub fn make_config(args: &Args) -> anyhow::Result<Config> {
    let host: IpAddr = args.shared.host.parse().with_context(|| {
        format!(
            "--host {:?} is not an IP address; use 127.0.0.1 (what qubes.ConnectTCP connects to)",
            args.shared.host
        )
    })?;
    if !host.is_loopback() {
        tracing::warn!(%host, "listening beyond loopback: on Qubes, k_server is reached through qubes.ConnectTCP on 127.0.0.1");
    }
    let listen = SocketAddr::new(host, args.port);

    let Reloadable { tls, proxy_token } = load_reloadable(args)?;
    if tls.is_none() && !host.is_loopback() {
        // Without TLS the proxy token is the only check, and it would cross the network
        // in clear: the client certificate is not something to give up beyond this VM.
        anyhow::bail!(
            "--host {host} without --tls-certfile and --tls-keyfile would serve plain HTTP, with the proxy token as the only check, beyond this machine; use --host 127.0.0.1 for the same-VM quickstart, or give the TLS files (and --client-ca-file) for mutual TLS"
        );
    }
    if tls.is_none() {
        tracing::warn!("serving plain HTTP without client certificates: only for the same-VM quickstart; pass --tls-certfile and --tls-keyfile for mutual TLS");
    }

    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => chromecard_store::default_data_dir().context(
            "no data directory: neither XDG_STATE_HOME nor HOME is set; pass --data-dir DIR",
        )?,
    };
    let allow = AllowList::new(args.allow_client.clone())?;
    if !allow.is_empty() {
        tracing::info!(names = ?allow.names(), "only client certificates with one of these names (CN or DNS SAN) are served (--allow-client)");
    }

    let store = Store::open(&data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (--data-dir)",
            data_dir.display()
        )
    })?;
    let counter = store
        .counter()
        .context("cannot read the counter from the store")?;
    let secrets = store
        .secret_count()
        .context("cannot count the secrets in the store")?;
    let store = Arc::new(store);
    let mode = match args.commit_mode {
        CommitModeArg::Group => CommitMode::Group,
        CommitModeArg::PerRequest => CommitMode::PerRequest,
    };
    let (writer, writer_thread) =
        Writer::start(store.clone(), mode).context("cannot start the store's writer thread")?;
    tracing::info!(path = %store.path().display(), counter, secrets, commit_mode = %mode, "durable store open");

    let serve = args.serve.settings(args.shared.connection_threads());
    Ok(Config {
        listen,
        tls,
        proxy_token,
        store,
        writer,
        writer_thread,
        allow,
        serve,
    })
}

/// What SIGHUP reloads: the proxy token, and the certificate, its key and the client CA.
/// Built whole or not at all. (The --allow-client names come from the command line,
/// which a reload cannot change.)
pub struct Reloadable {
    pub tls: Option<TlsAcceptor>,
    pub proxy_token: ProxyToken,
}

/// Loads (or reloads) the proxy token and the TLS files the flags name.
pub fn load_reloadable(args: &Args) -> anyhow::Result<Reloadable> {
    let proxy_token = args.shared.load_proxy_token()?;
    let tls = match (&args.shared.tls_certfile, &args.shared.tls_keyfile) {
        (Some(cert), Some(key)) => Some(make_tls(
            cert,
            key,
            args.client_ca_file.as_deref(),
            !args.no_http2,
        )?),
        (None, None) => None,
        _ => bail!("--tls-certfile and --tls-keyfile go together; give both or neither"),
    };
    Ok(Reloadable { tls, proxy_token })
}

/// TLS always with required client certificates: k_server has no anonymous clients.
/// HTTP/2 is offered unless `--no-http2`.
fn make_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
    http2: bool,
) -> anyhow::Result<TlsAcceptor> {
    let ca_file = match client_ca {
        Some(path) => path.to_path_buf(),
        None => {
            let beside = cert
                .parent()
                .map(|dir| dir.join("ca.crt"))
                .unwrap_or_else(|| PathBuf::from("ca.crt"));
            if !beside.is_file() {
                bail!(
                    "mutual TLS needs the CA that signs k_proxy's certificate: {} does not exist; pass --client-ca-file PATH",
                    beside.display()
                );
            }
            beside
        }
    };
    // As k_proxy does: an expired or not-yet-valid certificate stops start-up (or a
    // reload) with its name and dates, instead of failing every handshake later.
    let now = std::time::SystemTime::now();
    chromecard_tls::check_certificate_file("--tls-certfile", cert, now)
        .context("--tls-certfile")?;
    chromecard_tls::check_certificate_file("--client-ca-file", &ca_file, now)
        .context("--client-ca-file")?;
    let summary = chromecard_tls::ca_summary(&ca_file)
        .context("the client CA (--client-ca-file; default ca.crt beside --tls-certfile)")?;
    let server_config = chromecard_tls::make_server_config(
        cert,
        key,
        &ClientAuth::Required {
            ca_file: ca_file.clone(),
        },
    )
    .context("the TLS listener (--tls-certfile, --tls-keyfile, --client-ca-file)")?;
    let server_config = if http2 {
        chromecard_tls::offer_http2(&server_config)
    } else {
        server_config
    };
    tracing::info!(ca = %summary, http2, "mutual TLS: client certificates must chain to this CA");
    Ok(TlsAcceptor::from(server_config))
}
