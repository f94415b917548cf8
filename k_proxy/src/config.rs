//! Turns the flags into a checked configuration. Every refusal names the flag and the fix.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chromecard_gate::{Authenticator, Fido2Key, Gate, GateSettings, SoftAuthenticator};
use chromecard_hop::{ProxyToken, PROXY_TOKEN_ENV};
use chromecard_http::ServeSettings;
use chromecard_session::StoreSettings;
use chromecard_tls::ClientAuth;
use http::Uri;
use tokio_rustls::TlsAcceptor;

use crate::args::{Args, GateKind};
use crate::upstream::UpstreamSettings;

pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub sessions: StoreSettings,
    pub gate: Gate,
    pub upstream: UpstreamSettings,
    pub serve: ServeSettings,
    pub max_body_bytes: usize,
}

pub fn make_config(args: Args) -> anyhow::Result<Config> {
    let host: IpAddr = args.host.parse().with_context(|| {
        format!(
            "--host {:?} is not an IP address; use 127.0.0.1 (what qubes.ConnectTCP connects to)",
            args.host
        )
    })?;
    if !host.is_loopback() {
        tracing::warn!(%host, "listening beyond loopback: on Qubes, clients reach k_proxy through qubes.ConnectTCP on 127.0.0.1");
    }
    let listen = SocketAddr::new(host, args.port);

    let proxy_token = ProxyToken::load(
        args.proxy_token_file.as_deref(),
        std::env::var(PROXY_TOKEN_ENV).ok(),
        args.proxy_token.clone(),
    )?;
    tracing::info!(source = %proxy_token.source(), "proxy token loaded");

    // Toward clients: TLS without client certificates; the bearer token is their credential.
    let tls = match (&args.tls_certfile, &args.tls_keyfile) {
        (Some(cert), Some(key)) => {
            let config = chromecard_tls::make_server_config(cert, key, &ClientAuth::None)?;
            Some(TlsAcceptor::from(config))
        }
        _ => {
            tracing::warn!("serving clients over plain HTTP: bearer tokens cross the wire in clear; pass --tls-certfile and --tls-keyfile");
            None
        }
    };

    let upstream = make_upstream(&args, proxy_token)?;
    let gate = make_gate(&args);

    Ok(Config {
        listen,
        tls,
        sessions: StoreSettings {
            ttl: Duration::from_secs(args.session_ttl),
            max_sessions: usize::try_from(args.max_sessions).unwrap_or(usize::MAX),
        },
        gate,
        upstream,
        serve: ServeSettings {
            header_read_timeout: Duration::from_secs(args.header_read_timeout),
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            ..ServeSettings::default()
        },
        max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
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
                _ => match (&args.tls_certfile, &args.tls_keyfile) {
                    (Some(cert), Some(key)) => (cert, key),
                    _ => bail!(
                        "k_server requires a client certificate: pass --tls-certfile/--tls-keyfile (k_proxy's certificate) or --client-certfile/--client-keyfile"
                    ),
                },
            };
            let config = chromecard_tls::make_client_config(ca, Some((cert, key)))?;
            tracing::info!(ca = %chromecard_tls::ca_summary(ca)?, client_cert = %cert.display(), "mutual TLS toward k_server: trusting only this CA");
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
    })
}

fn make_gate(args: &Args) -> Gate {
    let authenticator: Arc<dyn Authenticator> = match args.gate {
        GateKind::Fido2 => Arc::new(Fido2Key::new(args.device.clone())),
        GateKind::Soft => {
            tracing::warn!("================================================================");
            tracing::warn!("--gate soft: SOFTWARE AUTHENTICATOR. No USB key, no person: any");
            tracing::warn!("login succeeds. For development and tests only; never deploy this.");
            tracing::warn!("================================================================");
            Arc::new(SoftAuthenticator::new(args.soft_behavior))
        }
    };
    let gate = Gate::new(
        authenticator,
        GateSettings {
            op_timeout: Duration::from_secs(args.touch_timeout),
            device_wait: Duration::from_secs(args.device_wait),
        },
    );
    tracing::info!(gate = %gate.describe(), level = "presence", "gate ready");
    gate
}
