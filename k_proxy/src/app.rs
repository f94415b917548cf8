//! One request's walk through k_proxy, one room per phase, in this order:
//!
//! 1. admit (admit.rs): head limits, the request target's length, the Host allow-list;
//! 2. route (route.rs): the room, and the methods it takes;
//! 3. authenticate (authenticate.rs): the credential and its live session, for every
//!    route that needs one;
//! 4. authorise (authorise.rs): the session's scope (the cookie's CSRF check is part of
//!    the credential);
//! 5. the room's handler: login.rs, session_api.rs, probes.rs, ui.rs, ws.rs (the events
//!    upgrade, whose ticket is its credential), or forward.rs, which has
//!    rewrite.rs strip what may not cross and upstream.rs carry it to k_server;
//! 6. respond (respond.rs): refusals as JSON errors, the token answer, cookies;
//! 7. log (log.rs): the access line, and the cause of any fault that is not the client's.
//!
//! This file holds the sequence and [`App`], everything a request may need.
//!
//! The rooms a forwarded request never enters (login, logout, the WebSocket upgrade, the
//! readiness probe) are boxed where they are awaited: an `async fn`'s future is as large as
//! its largest state, and hyper moves the request's future several times per request
//! (4.6 KiB of copies each time before, ~10k instructions per forwarded request).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use chromecard_gate::Gate;
use chromecard_http::{
    require_method, ApiError, ConnInfo, HeaderLimits, HttpResponse, RequestBody, Slot,
};
use chromecard_request::checked_resource_path;
use chromecard_session::SessionStore;
use http::request::Parts;
use http::Request;

use crate::admit::{self, Site};
use crate::authenticate::{authenticate, Use};
use crate::host_allow::AllowedHosts;
use crate::metrics::ProxyMetrics;
use crate::route::{route, Authed, Open, Route};
use crate::throttle::LoginThrottle;
use crate::upstream::Upstream;
use crate::{forward, log, login, probes, respond, session_api, ui, ws};

/// Sessions policy that is k_proxy's choice, not the store's mechanism.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub supersede_on_login: bool,
}

/// Everything a request may need, built once at start-up.
pub struct App {
    pub sessions: Arc<SessionStore>,
    pub policy: SessionPolicy,
    pub gate: Gate,
    /// Replaced whole on SIGHUP; a request keeps the one it started with.
    pub upstream: Slot<Upstream>,
    /// The hosts requests may be addressed to; replaced whole on SIGHUP (certificate names).
    pub hosts: Slot<AllowedHosts>,
    pub max_body_bytes: usize,
    pub header_limits: HeaderLimits,
    pub throttle: Arc<LoginThrottle>,
    /// Logins waiting for (or using) the key now, bounded by `max_waiting_logins`.
    pub waiting_logins: AtomicUsize,
    pub max_waiting_logins: usize,
    pub metrics: Arc<ProxyMetrics>,
    /// Becomes true when shutdown starts: a login waiting for a touch is abandoned at once
    /// (dropping the gate's future cancels the key operation) instead of holding the drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// What the browser page counts down from (ui.rs).
    pub ui: crate::ui::UiSettings,
    /// WebSocket tickets and the open event sockets (ws.rs).
    pub sockets: Arc<crate::ws::Sockets>,
}

impl App {
    /// The whole walk, then the log line.
    pub async fn handle(&self, request: Request<RequestBody>, conn: Arc<ConnInfo>) -> HttpResponse {
        let started = Instant::now();
        let method = request.method().clone();
        // A clone of the Uri shares hyper's buffer (a reference count, not a copy).
        let uri = request.uri().clone();
        let mut user: Option<Arc<str>> = None;
        let mut response = match self.process(request, &conn, &mut user).await {
            Ok(response) => response,
            Err(err) => {
                log::failure(conn.peer, &err);
                err.into_response()
            }
        };
        respond::browser_guards(&mut response);
        chromecard_http::access_line(
            conn.peer,
            &method,
            uri.path(),
            response.status(),
            user.as_deref(),
            started.elapsed(),
        );
        response
    }

    async fn process(
        &self,
        request: Request<RequestBody>,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        admit::head(&request, self.header_limits)?;
        let found = match route(request.uri().path()) {
            // An upgrade (or a ticket) on a resource's events path is the WebSocket room.
            Some(Route::Authed(Authed::Resource)) if ws::is_events_request(&request) => {
                Some(Route::Events)
            }
            found => found,
        };
        let hosts = self.hosts.get();
        let addressed = match found {
            Some(route) if route.any_host() => None,
            _ => admit::host(&hosts, &request, conn, &self.metrics)?,
        };
        let route = found.ok_or_else(ApiError::not_found)?;
        if let Some((methods, allow)) = route.methods() {
            require_method(request.method(), methods, allow)?;
        }
        let site = Site { hosts, addressed };
        match route {
            // The upgrade needs the request whole; the ticket is its credential.
            Route::Events => Box::pin(ws::ws_events(self, request, &site, user)).await,
            Route::Open(open) => {
                let (parts, body) = request.into_parts();
                self.open(open, &parts, body, conn, user).await
            }
            Route::Authed(authed) => {
                let (parts, body) = request.into_parts();
                self.authed(authed, &site, parts, body, conn, user).await
            }
        }
    }

    /// The rooms that need no session.
    async fn open(
        &self,
        open: Open,
        parts: &Parts,
        body: RequestBody,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        match open {
            Open::Health => Ok(probes::health()),
            Open::Ui(page) => ui::asset(page, &parts.method, self.ui, &self.sessions),
            Open::Ready => Box::pin(probes::ready(&self.upstream.get())).await,
            Open::Login => {
                let result = Box::pin(login::login(self, parts, body, conn, user)).await;
                self.metrics.logins.inc(match &result {
                    Ok(_) => "ok",
                    Err(err) => err.code,
                });
                result
            }
        }
    }

    /// The rooms that need a live session: [`authenticate`] runs once, here, for all.
    async fn authed(
        &self,
        authed: Authed,
        site: &Site,
        parts: Parts,
        body: RequestBody,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        // A malformed resource path is refused whoever asks, before any session lookup.
        let forward_target = match authed {
            Authed::Resource => checked_resource_path(&parts.uri)?,
            _ => String::new(),
        };
        let counts = match authed {
            Authed::WsTicket => Use::DoesNotCount,
            _ => Use::Counts,
        };
        let auth = authenticate(&self.sessions, site, &parts.headers, &parts.method, counts)?;
        *user = Some(auth.username());
        match authed {
            Authed::Status => Ok(session_api::status(&auth)),
            Authed::Refresh => Box::pin(session_api::refresh(self, &auth, conn, user)).await,
            Authed::List => session_api::list(self, &auth),
            Authed::Logout => Box::pin(session_api::logout(self, &auth, &parts, body, conn)).await,
            Authed::Resource => forward::resource(self, &auth, &forward_target, &parts, body).await,
            Authed::WsTicket => ws::ws_ticket(&self.sockets, site, &auth, &parts),
            Authed::EndSession => {
                Box::pin(ui::end_session(&self.sessions, &auth, &parts, body, conn)).await
            }
        }
    }
}
