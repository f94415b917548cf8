//! Turns the flags into a checked configuration. Every refusal names the flag and the fix.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use chromecard_gate::Gate;
use chromecard_hop::ProxyToken;
use chromecard_http::{HeaderLimits, ServeSettings};
use chromecard_session::{SessionFile, StoreSettings};
use chromecard_tls::{ClientAuth, TlsVersions};
use http::Uri;
use tokio_rustls::TlsAcceptor;

use crate::args::{Args, OnNewLogin};
use crate::host_allow::AllowedHosts;
use crate::throttle::ThrottleSettings;
use crate::upstream::{UpstreamHttp2, UpstreamSettings};

pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    /// The hosts requests may be addressed to (host_allow/policy.rs).
    pub hosts: AllowedHosts,
    pub sessions: StoreSettings,
    /// `--session-store`: the file sessions are written through to.
    pub session_store: Option<SessionFile>,
    /// `--on-new-login supersede`: a login ends the user's older sessions.
    pub supersede_on_login: bool,
    pub gate: Gate,
    pub upstream: UpstreamSettings,
    pub serve: ServeSettings,
    pub max_body_bytes: usize,
    pub header_limits: HeaderLimits,
    pub throttle: ThrottleSettings,
    pub max_waiting_logins: usize,
    pub admin_listen: Option<SocketAddr>,
}

pub fn make_config(args: &Args) -> anyhow::Result<Config> {
    let listen = listen_address(args)?;
    if !listen.ip().is_loopback() {
        tracing::warn!(host = %listen.ip(), "listening beyond loopback: on Qubes, clients reach k_proxy through qubes.ConnectTCP on 127.0.0.1");
    }

    let Reloadable {
        tls,
        upstream,
        hosts,
    } = load_reloadable(args)?;

    let session_store = match &args.session_store {
        Some(path) => Some(
            SessionFile::open(path)
                .with_context(|| format!("--session-store {}: cannot open it", path.display()))?,
        ),
        None => None,
    };
    let gate = make_gate(args)?;
    let header_limits = HeaderLimits {
        max_total_bytes: usize::try_from(args.max_header_bytes).unwrap_or(usize::MAX),
        ..HeaderLimits::default()
    };
    // The connection threads are counted once: each keeps its own share of the pool.
    let serve = args
        .serve
        .settings(upstream.connection_threads)
        .with_header_limit(header_limits.max_total_bytes);

    Ok(Config {
        listen,
        tls,
        hosts,
        sessions: StoreSettings {
            ttl: Duration::from_secs(args.session_ttl),
            idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
            max_sessions: usize::try_from(args.max_sessions).unwrap_or(usize::MAX),
        },
        session_store,
        supersede_on_login: args.on_new_login == OnNewLogin::Supersede,
        gate,
        upstream,
        serve,
        header_limits,
        max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
        throttle: ThrottleSettings {
            max_failures_per_user: args.login_max_failures,
            max_failures_per_address: args.login_max_failures_per_address,
            window: Duration::from_secs(args.login_window),
            ban: Duration::from_secs(args.login_ban),
        },
        max_waiting_logins: usize::try_from(args.max_waiting_logins).unwrap_or(usize::MAX),
        admin_listen: match args.admin_listen {
            Some(addr) if !addr.ip().is_loopback() => {
                tracing::warn!(%addr, "--admin-listen beyond loopback: metrics reveal usernames' login outcomes only in aggregate, but keep them local");
                Some(addr)
            }
            other => other,
        },
    })
}

/// `--host` and `--port`.
fn listen_address(args: &Args) -> anyhow::Result<SocketAddr> {
    let host: IpAddr = args.shared.host.parse().with_context(|| {
        format!(
            "--host {:?} is not an IP address; use 127.0.0.1 (what qubes.ConnectTCP connects to)",
            args.shared.host
        )
    })?;
    Ok(SocketAddr::new(host, args.port))
}

/// What SIGHUP reloads: the proxy token, the client-facing certificate (and with it the
/// allowed hosts its names add), and the k_server hop's CA and client certificate. Built
/// whole or not at all.
pub struct Reloadable {
    pub tls: Option<TlsAcceptor>,
    pub upstream: UpstreamSettings,
    pub hosts: AllowedHosts,
}

/// Loads (or reloads) the secrets and certificates from the files the flags name.
pub fn load_reloadable(args: &Args) -> anyhow::Result<Reloadable> {
    let proxy_token = args.shared.load_proxy_token()?;

    // Toward clients: TLS without client certificates; the bearer token is their credential.
    let mut certificate_names = Vec::new();
    let tls = match (&args.shared.tls_certfile, &args.shared.tls_keyfile) {
        (Some(cert), Some(key)) => {
            chromecard_tls::check_certificate_file("--tls-certfile", cert, SystemTime::now())
                .context("--tls-certfile")?;
            certificate_names =
                chromecard_tls::certificate_names(cert).context("--tls-certfile")?;
            let config = chromecard_tls::make_server_config_with(
                cert,
                key,
                &ClientAuth::None,
                tls_versions(args),
            )
            .context("the client-facing TLS listener (--tls-certfile, --tls-keyfile)")?;
            Some(TlsAcceptor::from(config))
        }
        _ => {
            tracing::warn!("serving clients over plain HTTP: bearer tokens cross the wire in clear; pass --tls-certfile and --tls-keyfile");
            None
        }
    };
    let upstream = make_upstream(args, proxy_token)?;
    let hosts = AllowedHosts::new(listen_address(args)?, tls.is_some())
        .with_certificate_names(certificate_names)
        .with_flags(&args.allowed_host);
    tracing::info!(%hosts, "answering requests addressed to these hosts; others get 421 (add one with --allowed-host)");
    Ok(Reloadable {
        tls,
        upstream,
        hosts,
    })
}

fn make_upstream(args: &Args, proxy_token: ProxyToken) -> anyhow::Result<UpstreamSettings> {
    let base: Uri = args.server_base_url.parse().with_context(|| {
        format!(
            "--server-base-url {:?} is not a URL; use e.g. https://127.0.0.1:9780",
            args.server_base_url
        )
    })?;
    let host = base
        .host()
        .context("--server-base-url has no host; use e.g. https://127.0.0.1:9780")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if base.query().is_some() {
        bail!("--server-base-url must not carry a query string");
    }
    let tls = match base.scheme_str() {
        Some("https") => {
            let ca = args.server_ca_file.as_deref().context(
                "--server-base-url is https but --server-ca-file is missing; give the chain CA (tls/phase2/ca.crt)",
            )?;
            let (cert, key) = match (&args.client_certfile, &args.client_keyfile) {
                (Some(cert), Some(key)) => (cert, key),
                _ => match (&args.shared.tls_certfile, &args.shared.tls_keyfile) {
                    (Some(cert), Some(key)) => (cert, key),
                    _ => bail!(
                        "k_server requires a client certificate: pass --tls-certfile/--tls-keyfile (k_proxy's certificate) or --client-certfile/--client-keyfile"
                    ),
                },
            };
            chromecard_tls::check_certificate_file("--server-ca-file", ca, SystemTime::now())
                .context("--server-ca-file")?;
            chromecard_tls::check_certificate_file("client certificate", cert, SystemTime::now())
                .context(
                "the client certificate toward k_server (--client-certfile, else --tls-certfile)",
            )?;
            let config = chromecard_tls::make_client_config_with(ca, Some((cert, key)), tls_versions(args)).context(
                "mutual TLS toward k_server (--server-ca-file; client certificate from --client-certfile/--client-keyfile, else --tls-certfile/--tls-keyfile)",
            )?;
            let summary = chromecard_tls::ca_summary(ca).context("--server-ca-file")?;
            tracing::info!(ca = %summary, client_cert = %cert.display(), "mutual TLS toward k_server: trusting only this CA");
            Some(config)
        }
        Some("http") => {
            let loopback = host == "localhost"
                || host
                    .parse::<IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if !loopback {
                bail!("--server-base-url uses plain http to a non-loopback host; use https:// with --server-ca-file");
            }
            if args.server_ca_file.is_some() {
                tracing::warn!("--server-ca-file is ignored: --server-base-url is plain http");
            }
            if args.upstream_http2 == UpstreamHttp2::Always {
                bail!("--upstream-http2 always needs an https:// --server-base-url (HTTP/2 is agreed on in the TLS handshake); use --upstream-http2 never with plain http");
            }
            tracing::warn!("forwarding to k_server over plain HTTP (same-VM quickstart only): no mutual TLS on this hop");
            None
        }
        _ => bail!(
            "--server-base-url {:?} must start with https:// (or http:// on loopback)",
            args.server_base_url
        ),
    };
    let server_name = args.server_name.clone().unwrap_or(host);
    Ok(UpstreamSettings {
        base,
        tls,
        server_name,
        proxy_token,
        connect_timeout: Duration::from_secs(args.upstream_connect_timeout),
        response_timeout: Duration::from_secs(args.upstream_timeout),
        connection_threads: args.shared.connection_threads(),
        http2: args.upstream_http2,
    })
}

/// TLS 1.3 on both hops unless `--allow-tls12` says otherwise.
fn tls_versions(args: &Args) -> TlsVersions {
    if args.allow_tls12 {
        tracing::warn!("--allow-tls12: TLS 1.2 is accepted on both hops; prefer TLS 1.3 clients");
        TlsVersions::AllowTls12
    } else {
        TlsVersions::Tls13Only
    }
}

/// The gate: authenticator, level and enrolment file (see gate_setup.rs).
fn make_gate(args: &Args) -> anyhow::Result<Gate> {
    crate::gate_setup::make_gate(args)
}
