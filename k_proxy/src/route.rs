//! Phase 2, route: which room a path leads to, and what each room accepts.
//!
//! Routes come in three kinds, and the kind decides the walk: an [`Open`] route is served
//! without a session (health probes, the login that makes one); every [`Authed`] route is
//! handed an [`crate::authenticate::Authenticated`] that only
//! [`crate::authenticate::authenticate`] can make; [`Route::Events`], the WebSocket
//! upgrade, takes the whole request and is authenticated by its ticket. A new route that
//! needs a session is a new `Authed` variant, and its handler cannot be called without one.

use http::Method;

/// Served without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    Health,
    Ready,
    Login,
    /// The browser page and its assets (ui.rs): nothing in them is the user's.
    Ui(crate::ui::UiRoute),
}

/// Served only for a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authed {
    Status,
    Refresh,
    Logout,
    List,
    Resource,
    /// `POST /session/ws-ticket` (ws.rs).
    WsTicket,
    /// `POST /session/end`: ends one session by id (ui.rs).
    EndSession,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Open(Open),
    Authed(Authed),
    /// `GET /resource/<stream>/events?ticket=`: the single-use ticket (ws.rs) authenticates
    /// the upgrade, since a browser cannot send `Authorization` on one.
    Events,
}

impl Route {
    /// The methods the route accepts (`None`: any; forwarding leaves methods to k_server),
    /// and the `Allow` header of its 405.
    pub fn methods(self) -> Option<(&'static [Method], &'static str)> {
        const GET: &[Method] = &[Method::GET];
        const POST: &[Method] = &[Method::POST];
        match self {
            Route::Open(Open::Health | Open::Ready | Open::Ui(_))
            | Route::Events
            | Route::Authed(Authed::List) => Some((GET, "GET")),
            Route::Open(Open::Login)
            | Route::Authed(
                Authed::Status
                | Authed::Refresh
                | Authed::Logout
                | Authed::WsTicket
                | Authed::EndSession,
            ) => Some((POST, "POST")),
            Route::Authed(Authed::Resource) => None,
        }
    }

    /// Health probes answer any `Host`: they carry no session and no secret.
    pub fn any_host(self) -> bool {
        matches!(self, Route::Open(Open::Health | Open::Ready))
    }
}

/// The route table.
pub fn route(path: &str) -> Option<Route> {
    Some(match path {
        "/healthz" => Route::Open(Open::Health),
        "/readyz" => Route::Open(Open::Ready),
        "/session/login" => Route::Open(Open::Login),
        "/session/status" => Route::Authed(Authed::Status),
        "/session/refresh" => Route::Authed(Authed::Refresh),
        "/session/logout" => Route::Authed(Authed::Logout),
        "/session/list" => Route::Authed(Authed::List),
        "/session/ws-ticket" => Route::Authed(Authed::WsTicket),
        "/session/end" => Route::Authed(Authed::EndSession),
        p if p.starts_with("/resource/") => Route::Authed(Authed::Resource),
        p => Route::Open(Open::Ui(crate::ui::route(p)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/session/login"), Some(Route::Open(Open::Login)));
        assert_eq!(
            route("/resource/counter"),
            Some(Route::Authed(Authed::Resource))
        );
        assert_eq!(route("/resource"), None);
        assert_eq!(route("/session/login/"), None);
        assert_eq!(
            route("/session/refresh"),
            Some(Route::Authed(Authed::Refresh))
        );
        assert_eq!(route("/session/list"), Some(Route::Authed(Authed::List)));
        assert!(route("/healthz").is_some_and(Route::any_host));
        assert_eq!(
            route("/session/end"),
            Some(Route::Authed(Authed::EndSession))
        );
        assert_eq!(
            route("/"),
            Some(Route::Open(Open::Ui(crate::ui::UiRoute::Page)))
        );
        assert!(!route("/session/status").is_some_and(Route::any_host));
    }
}
