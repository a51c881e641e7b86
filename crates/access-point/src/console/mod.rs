//! The operations console: server-rendered pages at `/console/` for the helpdesk and
//! second-line staff ("where is my message?"), in English and Latvian, usable without
//! JavaScript (there is none).
//!
//! | path | who | what |
//! | --- | --- | --- |
//! | `GET /console/` | anyone | the login page, or the dashboard when logged in |
//! | `POST /console/login`, `/logout` | anyone / logged in | local accounts (argon2id) |
//! | `GET /console/messages` | viewer | search with the API's filters, paged |
//! | `GET /console/messages/{id}` | viewer | header, properties, payloads, history, receipt or error |
//! | `GET /console/messages/{id}/payloads/{n}` | operator | download (audited) |
//! | `POST /console/messages/{id}/retry`, `resend`, `ack` | operator | the API's acts |
//! | `GET /console/partners` | viewer | parties of the PModes, certificates, last exchange; own keys |
//! | `GET /console/pmodes` | viewer | the PModes in force (parties, legs) and `pmode check`'s diagnostics of the files |
//! | `GET /console/audit` | viewer | the audit trail, filtered |
//! | `POST /console/admin/reload`, `/admin/purge` | admin | reload, retention now |
//!
//! It knows no OOTS and writes no second search: the message pages call the backend API's
//! own functions (`api::messages`: the filter parser, retry, resend, ack, download) as a
//! console client that sees every message, after checking the user's [`Role`].
//!
//! # Security
//!
//! * Sessions live in the store (both instances of a pair share them): cookie
//!   `__Host-varti-console`, `HttpOnly; Secure; SameSite=Strict; Path=/`; idle and absolute
//!   timeouts on the access point's clock; a login always starts a new session.
//! * Every POST carries the session's CSRF token (the login form a token bound to a
//!   short-lived cookie); a POST whose `Origin` is not this host is refused.
//! * Every answer carries a strict CSP (`default-src 'none'`, the stylesheet from
//!   `'self'`, `frame-ancestors 'none'`, `form-action 'self'`), `X-Frame-Options: DENY`,
//!   `nosniff`, `Referrer-Policy: same-origin` (with `no-referrer`, browsers send `Origin: null` on forms), `no-store`, and HSTS when served over TLS.
//! * Every login (successful or not), logout and act is appended to the audit trail with
//!   the actor `console:<user>`.

pub mod auth;
mod pages;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use varti_store::{AuditFilter, AuditOutcome, Direction, ListFilter, MessageRecord, State};

pub use auth::{hash_password, Role};

use crate::access_point::AccessPoint;
use crate::api::messages::{self, encode_cursor, list_filter, parse_query, SEGMENT};
use crate::api::{blocking, ApiError, Client};
use crate::ops::Readiness;
use crate::server::http::full;
use crate::server::{Body, PeerInfo, RouteFuture, Routes};
use auth::LoggedIn;
use pages::{Lang, SearchForm};

/// Where the console is served.
pub(crate) const BASE: &str = "/console/";
/// The session cookie (`__Host-`: Secure, Path=/, no Domain: only this host sets it).
const SESSION_COOKIE: &str = "__Host-varti-console";
/// The login form's CSRF cookie.
const LOGIN_COOKIE: &str = "__Host-varti-console-login";
/// The language cookie.
const LANG_COOKIE: &str = "varti-console-lang";
/// Largest form body read.
const MAX_FORM: usize = 16 * 1024;
/// Messages per page.
const PAGE: usize = 50;

/// `[console]`: the operations console.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console (default true; without accounts nobody can log in).
    pub enabled: bool,
    /// Its own listener address; by default it is served on the backend listener.
    pub listen: Option<std::net::SocketAddr>,
    /// On its own listener: HTTPS with the `[tls]` certificate (no client certificates).
    pub tls: bool,
    /// A session ends after this many minutes without a request (default 30).
    pub idle_timeout_mins: u64,
    /// A session ends this many hours after the login, whatever its use (default 8).
    pub absolute_timeout_hours: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            listen: None,
            tls: false,
            idle_timeout_mins: 30,
            absolute_timeout_hours: 8,
        }
    }
}

impl ConsoleConfig {
    pub(crate) fn idle_timeout(&self) -> time::Duration {
        time::Duration::minutes(self.idle_timeout_mins.min(i64::MAX as u64 / 60) as i64)
    }

    pub(crate) fn absolute_timeout(&self) -> time::Duration {
        time::Duration::hours(self.absolute_timeout_hours.min(i64::MAX as u64 / 3600) as i64)
    }
}

/// The console over an access point.
pub struct Console {
    ap: Arc<AccessPoint>,
    config: ConsoleConfig,
    readiness: Option<Readiness>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The routes of a listener that serves the console under `/console` and hands every other
/// path to `rest` (the backend API on the backend listener; `None` on its own listener).
pub struct ConsoleRoutes {
    console: Arc<Console>,
    rest: Option<Arc<dyn Routes>>,
}

impl std::fmt::Debug for ConsoleRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleRoutes").finish_non_exhaustive()
    }
}

impl ConsoleRoutes {
    /// `console` under `/console`, everything else to `rest`.
    pub fn new(console: Arc<Console>, rest: Option<Arc<dyn Routes>>) -> Self {
        ConsoleRoutes { console, rest }
    }
}

impl Routes for ConsoleRoutes {
    fn call(&self, request: Request<Incoming>, peer: PeerInfo) -> RouteFuture {
        let path = request.uri().path();
        if path == "/console" || path.starts_with(BASE) {
            let console = self.console.clone();
            return Box::pin(async move { console.handle(request, peer).await });
        }
        match &self.rest {
            Some(rest) => rest.call(request, peer),
            None => {
                let mut response = Response::new(full("not found: the console is at /console/\n"));
                *response.status_mut() = StatusCode::NOT_FOUND;
                Box::pin(async move { response })
            }
        }
    }
}

/// What a request brings: its language, cookies, query, whether over TLS.
struct Ctx {
    lang: Lang,
    set_lang: bool,
    cookies: BTreeMap<String, String>,
    query: String,
    here: String,
}

impl Console {
    /// The console of `ap`; `readiness`, when given, is shown on the dashboard.
    pub fn new(ap: Arc<AccessPoint>, config: ConsoleConfig, readiness: Option<Readiness>) -> Self {
        Console {
            ap,
            config,
            readiness,
        }
    }

    /// Removes expired sessions (the server calls it now and then). Blocking.
    pub fn sweep(&self) {
        let now = self.ap.clock.now();
        let idle = now - self.config.idle_timeout();
        let old = now - self.config.absolute_timeout();
        if let Err(e) = self.ap.store.purge_console_sessions(idle, old) {
            tracing::warn!(error = %e, "cannot purge expired console sessions");
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: PeerInfo) -> Response<Body> {
        let ctx = context(&request);
        let mut response = self.route(request, &ctx).await;
        secure_headers(response.headers_mut(), peer.tls);
        if ctx.set_lang {
            let cookie = format!(
                "{LANG_COOKIE}={}; Path=/console; Max-Age=31536000; SameSite=Strict; Secure",
                ctx.lang.code()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        response
    }

    async fn route(self: &Arc<Self>, request: Request<Incoming>, ctx: &Ctx) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let rest = path.strip_prefix("/console").unwrap_or("");
        let method = request.method().clone();
        if rest.is_empty() {
            return redirect(BASE);
        }
        if method == Method::GET && rest == "/static/console.css" {
            let mut r = Response::new(full(pages::CSS));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            return r;
        }
        if method == Method::POST {
            if let Some(origin) = request.headers().get(header::ORIGIN) {
                if !same_origin(origin, &request) {
                    return self.refuse(
                        ctx,
                        None,
                        403,
                        "the form was sent from another site",
                        "open the console from its own address and submit the form again",
                    );
                }
            }
        }
        if method == Method::POST && rest == "/login" {
            return self.login(request, ctx).await;
        }
        let who = match ctx.cookies.get(SESSION_COOKIE) {
            Some(cookie) => {
                let (ap, config, cookie) = (self.ap.clone(), self.config.clone(), cookie.clone());
                match tokio::task::spawn_blocking(move || auth::current(&ap, &config, &cookie))
                    .await
                {
                    Ok(Ok(who)) => who,
                    Ok(Err(e)) => {
                        return self.refuse(
                            ctx,
                            None,
                            500,
                            &format!("the store failed: {e}"),
                            "the server log has details; retry later",
                        )
                    }
                    Err(e) => {
                        return self.refuse(
                            ctx,
                            None,
                            500,
                            &format!("internal error: {e}"),
                            "retry later",
                        )
                    }
                }
            }
            None => None,
        };
        let Some(who) = who else {
            return match (method, rest) {
                (Method::GET, "/") => self.login_page(ctx, false, StatusCode::OK),
                (Method::GET, _) => redirect(BASE),
                _ => self.refuse(
                    ctx,
                    None,
                    403,
                    "you are not logged in (or your session ended)",
                    "log in again at /console/",
                ),
            };
        };
        if method == Method::POST {
            let form = match read_form(request).await {
                Ok(f) => f,
                Err(e) => {
                    return self.refuse(
                        ctx,
                        Some(&who),
                        400,
                        &e,
                        "submit the form from the console page",
                    )
                }
            };
            let token = form.get("csrf").map(String::as_str).unwrap_or("");
            if !auth::same_token(token, &who.session.csrf) {
                return self.refuse(
                    ctx,
                    Some(&who),
                    403,
                    "the form's security token is missing or wrong",
                    "reload the page and submit the form again",
                );
            }
            return self.post(rest, ctx, who).await;
        }
        if method != Method::GET {
            return self.refuse(
                ctx,
                Some(&who),
                405,
                &format!("{method} is not allowed here"),
                "use the links and forms of the console",
            );
        }
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        match segments.as_slice() {
            [""] => self.dashboard(ctx, who).await,
            ["messages"] => self.messages(ctx, who).await,
            ["messages", id] => self.message(ctx, who, decode(id)).await,
            ["messages", id, "payloads", n] => {
                self.download(ctx, who, decode(id), n.to_string()).await
            }
            ["partners"] => self.partners(ctx, who).await,
            ["pmodes"] => self.pmodes(ctx, who).await,
            ["audit"] => self.audit(ctx, who).await,
            _ => self.refuse(
                ctx,
                Some(&who),
                404,
                &format!("no console page at {path}"),
                "use the navigation at the top",
            ),
        }
    }

    async fn post(self: &Arc<Self>, rest: &str, ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        match segments.as_slice() {
            ["logout"] => self.logout(ctx, who).await,
            ["messages", id, act @ ("retry" | "resend" | "ack")] => {
                self.act(ctx, who, decode(id), act).await
            }
            ["admin", act @ ("reload" | "purge")] => self.admin(ctx, who, act).await,
            _ => self.refuse(
                ctx,
                Some(&who),
                404,
                &format!("nothing to post at /console{rest}"),
                "use the forms of the console",
            ),
        }
    }

    fn login_page(&self, ctx: &Ctx, failed: bool, status: StatusCode) -> Response<Body> {
        // The browser's login token stays while it lives (another tab, or a second
        // request for the page, must not invalidate the form already shown).
        let token = ctx
            .cookies
            .get(LOGIN_COOKIE)
            .filter(|t| {
                t.len() == 43
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .cloned()
            .unwrap_or_else(auth::random_token);
        let mut r = html_response(status, pages::login(ctx.lang, &token, failed));
        let cookie = format!(
            "{LOGIN_COOKIE}={token}; Path=/; Max-Age=1800; HttpOnly; Secure; SameSite=Strict"
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    }

    async fn login(self: &Arc<Self>, request: Request<Incoming>, ctx: &Ctx) -> Response<Body> {
        let form = match read_form(request).await {
            Ok(f) => f,
            Err(e) => return self.refuse(ctx, None, 400, &e, "submit the login form of /console/"),
        };
        let token = form.get("csrf").map(String::as_str).unwrap_or("");
        let expected = ctx
            .cookies
            .get(LOGIN_COOKIE)
            .map(String::as_str)
            .unwrap_or("");
        if expected.is_empty() || !auth::same_token(token, expected) {
            return self.refuse(
                ctx,
                None,
                403,
                "the login form's security token is missing or wrong",
                "open /console/ again and log in from there (cookies must be allowed)",
            );
        }
        let name = form.get("user").cloned().unwrap_or_default();
        let password = form.get("password").cloned().unwrap_or_default();
        let previous = ctx.cookies.get(SESSION_COOKIE).cloned();
        let ap = self.ap.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = auth::log_in(&ap, &name, &password, previous.as_deref());
            let actor = format!("console:{}", name.chars().take(200).collect::<String>());
            let (outcome, details) = match &result {
                Ok(Some((_, who))) => (AuditOutcome::Ok, json!({"role": who.role.as_str()})),
                Ok(None) => (
                    AuditOutcome::Refused,
                    json!({"error": "wrong user name or password"}),
                ),
                Err(e) => (AuditOutcome::Failed, json!({"error": e.to_string()})),
            };
            if !name.is_empty() {
                let _ = ap.audit(&actor, "console.login", "", outcome, details);
            }
            result
        })
        .await;
        match result {
            Ok(Ok(Some((cookie, who)))) => {
                tracing::info!(user = %who.user(), role = %who.role, "console login");
                let mut r = redirect(BASE);
                let headers = r.headers_mut();
                let set =
                    format!("{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; Secure; SameSite=Strict");
                if let Ok(v) = HeaderValue::from_str(&set) {
                    headers.append(header::SET_COOKIE, v);
                }
                headers.append(
                    header::SET_COOKIE,
                    HeaderValue::from_str(&format!(
                        "{LOGIN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
                    ))
                    .expect("ASCII"),
                );
                r
            }
            Ok(Ok(None)) => self.login_page(ctx, true, StatusCode::UNAUTHORIZED),
            Ok(Err(e)) => self.refuse(
                ctx,
                None,
                500,
                &format!("the store failed: {e}"),
                "the server log has details; retry later",
            ),
            Err(e) => self.refuse(
                ctx,
                None,
                500,
                &format!("internal error: {e}"),
                "retry later",
            ),
        }
    }

    async fn logout(self: &Arc<Self>, _ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let ap = self.ap.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let removed = ap.store.remove_console_session(&who.session.id_sha256);
            let outcome = if removed.is_ok() {
                AuditOutcome::Ok
            } else {
                AuditOutcome::Failed
            };
            let _ = ap.audit(&who.actor(), "console.logout", "", outcome, json!(null));
        })
        .await;
        let mut r = redirect(BASE);
        r.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
            ))
            .expect("ASCII"),
        );
        r
    }

    /// An error page with `status`; audited when it refuses a logged-in user's act.
    fn refuse(
        &self,
        ctx: &Ctx,
        who: Option<&LoggedIn>,
        status: u16,
        e: &str,
        hint: &str,
    ) -> Response<Body> {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        html_response(code, pages::error(ctx.lang, who, status, e, hint))
    }

    /// Refuses `who` an act their role does not allow (403, audited).
    async fn forbidden(
        &self,
        ctx: &Ctx,
        who: &LoggedIn,
        action: &str,
        subject: &str,
        needs: Role,
    ) -> Response<Body> {
        let (ap, actor, action_, subject_) = (
            self.ap.clone(),
            who.actor(),
            action.to_owned(),
            subject.to_owned(),
        );
        let role = who.role;
        let _ = tokio::task::spawn_blocking(move || {
            ap.audit(
                &actor,
                &action_,
                &subject_,
                AuditOutcome::Refused,
                json!({"error": format!("role {role} may not; needs {needs}")}),
            )
        })
        .await;
        self.refuse(
            ctx,
            Some(who),
            403,
            &format!("your role ({}) may not do this: it needs {needs}", who.role),
            "ask an administrator to give you the role (varti console user add NAME --role …)",
        )
    }

    async fn dashboard(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let this = self.clone();
        let built = blocking(self.ap.clone(), move |ap| Ok(this.dashboard_data(ap)?)).await;
        match built {
            Ok(d) => html_response(StatusCode::OK, pages::dashboard(ctx.lang, &who, &d)),
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    fn dashboard_data(
        &self,
        ap: &AccessPoint,
    ) -> Result<pages::Dashboard, varti_store::StoreError> {
        const CAP: usize = 500;
        let now = ap.clock.now();
        let snapshot = ap.current();
        let mut by_state = Vec::new();
        for state in State::ALL {
            let page = ap.store.list(&ListFilter {
                states: vec![state],
                exclude_test: true,
                limit: CAP,
                ..ListFilter::default()
            })?;
            by_state.push((state, page.records.len(), page.next.is_some()));
        }
        // The last 24 hours, from the newest 2,000 messages (a chart, not an account).
        let start = now - time::Duration::hours(23);
        let start = start
            .replace_minute(0)
            .unwrap_or(start)
            .replace_second(0)
            .unwrap_or(start)
            .replace_nanosecond(0)
            .unwrap_or(start);
        let mut hours: Vec<(OffsetDateTime, usize, usize, usize)> = (0..24)
            .map(|i| (start + time::Duration::hours(i), 0, 0, 0))
            .collect();
        let mut filter = ListFilter {
            created_from: Some(start),
            exclude_test: true,
            limit: 1000,
            ..ListFilter::default()
        };
        for _ in 0..2 {
            let page = ap.store.list(&filter)?;
            for r in &page.records {
                let i = ((r.created_at - start).whole_hours()).clamp(0, 23) as usize;
                match (r.direction, r.state) {
                    (_, State::Failed) => hours[i].3 += 1,
                    (Direction::Outbound, State::Acknowledged) => hours[i].1 += 1,
                    (Direction::Inbound, _) => hours[i].2 += 1,
                    _ => {}
                }
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        let mut certificates = Vec::new();
        let id = &snapshot.identity;
        for (what, cert) in [
            ("signing", &id.signing_cert),
            ("encryption", &id.encryption_cert),
        ] {
            certificates.push((what.to_owned(), subject_of(cert), days_left(cert, now)));
        }
        for (party, certs) in &snapshot.partners {
            for (what, cert) in [
                ("signing", &certs.signing),
                ("encryption", &certs.encryption),
            ] {
                if let Some(cert) = cert {
                    certificates.push((
                        format!("{party} {what}"),
                        subject_of(cert),
                        days_left(cert, now),
                    ));
                }
            }
        }
        certificates.sort_by_key(|c| c.2);
        certificates.truncate(10);
        let errors = ap
            .store
            .list(&ListFilter {
                states: vec![State::Failed, State::WaitingForRetry],
                exclude_test: true,
                limit: 10,
                ..ListFilter::default()
            })?
            .records;
        Ok(pages::Dashboard {
            party: snapshot.identity.party.clone(),
            instance: ap.instance.clone(),
            readiness: self.readiness.as_ref().map(|r| r.report()),
            queue_depth: ap.store.queue_depth()?,
            by_state,
            hours,
            certificates,
            errors,
        })
    }

    async fn messages(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let (form, query) = match search_query(&ctx.query) {
            Ok(q) => q,
            Err(e) => {
                let page = pages::messages(
                    ctx.lang,
                    &who,
                    &ctx.here,
                    &SearchForm::default(),
                    &[],
                    None,
                    Some((e.error, e.hint)),
                );
                return html_response(StatusCode::BAD_REQUEST, page);
            }
        };
        let result = render_messages(&self.ap, &query).await;
        match result {
            Ok((records, next)) => {
                let next = next.map(|cursor| {
                    let kept: Vec<String> = form
                        .values
                        .iter()
                        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                        .collect();
                    format!("{BASE}messages?{}&after={}", kept.join("&"), cursor)
                });
                html_response(
                    StatusCode::OK,
                    pages::messages(ctx.lang, &who, &ctx.here, &form, &records, next, None),
                )
            }
            Err(e) => {
                let status = e.status;
                let page = pages::messages(
                    ctx.lang,
                    &who,
                    &ctx.here,
                    &form,
                    &[],
                    None,
                    Some((e.error, e.hint)),
                );
                html_response(status, page)
            }
        }
    }

    async fn message(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn, id: String) -> Response<Body> {
        let lookup = id.clone();
        let record = blocking(self.ap.clone(), move |ap| Ok(ap.store.get(&lookup)?)).await;
        let done = parse_query(&ctx.query)
            .ok()
            .and_then(|q| q.into_iter().find(|(k, _)| k == "done").map(|(_, v)| v));
        match record {
            Ok(Some(r)) => html_response(
                StatusCode::OK,
                pages::message(ctx.lang, &who, &r, done.as_deref()),
            ),
            Ok(None) => self.api_error(ctx, &who, ApiError::no_message(&id)),
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    async fn download(
        self: &Arc<Self>,
        ctx: &Ctx,
        who: LoggedIn,
        id: String,
        n: String,
    ) -> Response<Body> {
        if who.role < Role::Operator {
            return self
                .forbidden(ctx, &who, "message.download", &id, Role::Operator)
                .await;
        }
        let client = Client::console(who.actor());
        match messages::payload(self.ap.clone(), client, id.clone(), &n).await {
            Ok(mut r) => {
                let (ap, actor, subject) = (self.ap.clone(), who.actor(), id.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    ap.audit(
                        &actor,
                        "message.download",
                        &subject,
                        AuditOutcome::Ok,
                        json!({"payload": n}),
                    )
                })
                .await;
                let name = format!(
                    "{}-{}",
                    sanitize(&id),
                    sanitize(
                        &r.headers()
                            .get("x-varti-content-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("payload")
                            .replace("cid:", "")
                    )
                );
                if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                    r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                r
            }
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    async fn act(
        self: &Arc<Self>,
        ctx: &Ctx,
        who: LoggedIn,
        id: String,
        act: &str,
    ) -> Response<Body> {
        let action = format!("message.{act}");
        if who.role < Role::Operator {
            return self
                .forbidden(ctx, &who, &action, &id, Role::Operator)
                .await;
        }
        let client = Client::console(who.actor());
        let (ap, id2) = (self.ap.clone(), id.clone());
        let result = match act {
            "retry" => messages::retry(ap, client, id2).await,
            "resend" => messages::resend(ap, client, id2).await,
            _ => messages::ack(ap, client, id2).await,
        };
        match result {
            Ok(_) => redirect(&format!("{BASE}messages/{}?done={act}", enc(&id))),
            Err(e) => {
                let (ap, actor, subject, why) =
                    (self.ap.clone(), who.actor(), id.clone(), e.error.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    ap.audit(
                        &actor,
                        &action,
                        &subject,
                        AuditOutcome::Refused,
                        json!({"error": why}),
                    )
                })
                .await;
                self.api_error(ctx, &who, e)
            }
        }
    }

    async fn admin(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn, act: &str) -> Response<Body> {
        if who.role < Role::Admin {
            return self
                .forbidden(ctx, &who, &format!("console.{act}"), "", Role::Admin)
                .await;
        }
        let actor = who.actor();
        let outcome = if act == "reload" {
            blocking(self.ap.clone(), move |ap| {
                let report = ap.reload(&actor);
                if report.applied {
                    Ok(format!("reloaded (generation {})", report.generation))
                } else {
                    Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("the reload was refused: {}", report.errors.join("; ")),
                        "fix the files named and reload again; the old set stays in force",
                    ))
                }
            })
            .await
        } else {
            blocking(self.ap.clone(), move |ap| {
                let purged = crate::api::purge_now(ap, ap.clock.now());
                let (outcome, details) = match &purged {
                    Ok(p) => (AuditOutcome::Ok, json!({"payloads_purged": p.payloads, "metadata_purged": p.metadata, "test_purged": p.test})),
                    Err(e) => (AuditOutcome::Failed, json!({"error": e.to_string()})),
                };
                let _ = ap.audit(&actor, "messages.purge", "", outcome, details);
                let p = purged?;
                Ok(format!("purged: {} payloads, {} records, {} test messages", p.payloads, p.metadata, p.test))
            })
            .await
        };
        match outcome {
            Ok(_) => redirect(BASE),
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    async fn partners(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let built = blocking(self.ap.clone(), move |ap| {
            let now = ap.clock.now();
            let snapshot = ap.current();
            let id = &snapshot.identity;
            let own = vec![
                cert_view("signing", &id.signing_cert, now),
                cert_view("encryption", &id.encryption_cert, now),
            ];
            let mut partners = Vec::new();
            for party in &snapshot.pmodes.parties {
                if party.name == id.party {
                    continue;
                }
                let mut certificates = Vec::new();
                if let Some(certs) = snapshot.partners.get(&party.name) {
                    if let Some(c) = &certs.signing {
                        certificates.push(cert_view("signing", c, now));
                    }
                    if let Some(c) = &certs.encryption {
                        certificates.push(cert_view("encryption", c, now));
                    }
                }
                let mut last = None;
                for pid in &party.ids {
                    let page = ap.store.list(&ListFilter {
                        partner: Some(pid.value.clone()),
                        limit: 1,
                        ..ListFilter::default()
                    })?;
                    if let Some(r) = page.records.into_iter().next() {
                        if last
                            .as_ref()
                            .is_none_or(|l: &MessageRecord| l.created_at < r.created_at)
                        {
                            last = Some(r);
                        }
                    }
                }
                partners.push(pages::PartnerView {
                    party: party.name.clone(),
                    endpoints: party.endpoint.iter().cloned().collect(),
                    certificates,
                    last,
                });
            }
            Ok((own, partners))
        })
        .await;
        match built {
            Ok((own, partners)) => html_response(
                StatusCode::OK,
                pages::partners(ctx.lang, &who, &own, &partners),
            ),
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    async fn pmodes(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let built = blocking(self.ap.clone(), move |ap| {
            let snapshot = ap.current();
            let set = &snapshot.pmodes;
            let parties = set
                .parties
                .iter()
                .map(|p| (p.name.clone(), p.endpoint.clone().unwrap_or_default()))
                .collect::<Vec<_>>();
            let legs = set
                .legs
                .iter()
                .map(|l| pages::LegView {
                    process_leg: format!("{}/{}", l.process, l.name),
                    file: l
                        .file
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    mep: format!("{:?} {:?}", l.mep, l.binding),
                    from: format!("{} ({})", l.from.parties.join(", "), l.from.role),
                    to: format!("{} ({})", l.to.parties.join(", "), l.to.role),
                    service: l.service.value.clone(),
                    action: l.action.clone(),
                    security: format!(
                        "{:?}{}{}",
                        l.security.profile,
                        if l.security.sign { ", signed" } else { "" },
                        if l.security.encrypt {
                            ", encrypted"
                        } else {
                            ""
                        }
                    ),
                })
                .collect::<Vec<_>>();
            // The files as they are now (what a reload would load), checked like
            // `varti pmode check`.
            let (_, diagnostics) = varti_as4::pmode::files::load_dir(&snapshot.settings.pmodes_dir);
            let diagnostics = diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>();
            Ok((parties, legs, diagnostics, snapshot.generation))
        })
        .await;
        match built {
            Ok((parties, legs, diagnostics, generation)) => html_response(
                StatusCode::OK,
                pages::pmodes(ctx.lang, &who, &parties, &legs, &diagnostics, generation),
            ),
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    async fn audit(self: &Arc<Self>, ctx: &Ctx, who: LoggedIn) -> Response<Body> {
        let mut form = SearchForm::default();
        let mut after = None;
        for (k, v) in parse_query(&ctx.query).unwrap_or_default() {
            match k.as_str() {
                "since" | "actor" | "action" | "subject" if !v.is_empty() => {
                    form.values.insert(k, v);
                }
                "after" => after = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let since = match form
            .values
            .get("since")
            .map(|s| parse_local_time(s, "since"))
        {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => return self.api_error(ctx, &who, e),
            // By default the last seven days.
            None => Some(self.ap.clock.now() - time::Duration::days(7)),
        };
        let wanted = |e: &varti_store::AuditEntry, form: &SearchForm| {
            let has = |key: &str, value: &str| {
                form.values
                    .get(key)
                    .is_none_or(|want| value.contains(want.as_str()))
            };
            has("actor", &e.actor) && has("action", &e.action) && has("subject", &e.subject)
        };
        let form_ = SearchForm {
            values: form.values.clone(),
        };
        let page = blocking(self.ap.clone(), move |ap| {
            // Filtered on this side from pages of the trail (administrative acts: few).
            let mut filter = AuditFilter {
                since,
                after,
                limit: 1000,
            };
            let mut entries = Vec::new();
            let mut next = None;
            for _ in 0..20 {
                let page = ap.store.list_audit(&filter)?;
                for e in page.entries {
                    if wanted(&e, &form_) && entries.len() < 200 {
                        entries.push(e);
                    }
                }
                match page.next {
                    Some(n) if entries.len() < 200 => filter.after = Some(n),
                    Some(n) => {
                        next = Some(n);
                        break;
                    }
                    None => break,
                }
            }
            if entries.len() == 200 {
                next = entries.last().map(|e| e.seq);
            }
            Ok((entries, next))
        })
        .await;
        match page {
            Ok((entries, next)) => {
                let next = next.map(|n| {
                    let kept: Vec<String> = form
                        .values
                        .iter()
                        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                        .collect();
                    format!("{BASE}audit?{}&after={n}", kept.join("&"))
                });
                html_response(
                    StatusCode::OK,
                    pages::audit(ctx.lang, &who, &ctx.here, &form, &entries, next),
                )
            }
            Err(e) => self.api_error(ctx, &who, e),
        }
    }

    fn api_error(&self, ctx: &Ctx, who: &LoggedIn, e: ApiError) -> Response<Body> {
        html_response(
            e.status,
            pages::error(ctx.lang, Some(who), e.status.as_u16(), &e.error, &e.hint),
        )
    }
}

/// One page of messages for the API query `query` (already checked), newest first.
async fn render_messages(
    ap: &Arc<AccessPoint>,
    query: &str,
) -> Result<(Vec<MessageRecord>, Option<String>), ApiError> {
    let client = Client::console("console".into());
    let mut filter = list_filter(&client, query)?;
    if !query.split('&').any(|p| p.starts_with("limit=")) {
        filter.limit = PAGE;
    }
    let page = blocking(ap.clone(), move |ap| Ok(ap.store.list(&filter)?)).await?;
    Ok((page.records, page.next.as_ref().map(encode_cursor)))
}

/// Renders a page of 50 messages for `query` (the API's search parameters) as the console
/// does: for the benchmark. Blocking.
pub fn render_message_page(ap: &AccessPoint, query: &str) -> Result<String, String> {
    let client = Client::console("console".into());
    let mut filter = list_filter(&client, query).map_err(|e| e.error)?;
    filter.limit = PAGE;
    let page = ap.store.list(&filter).map_err(|e| e.to_string())?;
    let who = LoggedIn {
        session: varti_store::ConsoleSession {
            id_sha256: "bench".into(),
            user: "bench".into(),
            csrf: "bench".into(),
            created_at: ap.clock.now(),
            last_seen: ap.clock.now(),
        },
        role: Role::Viewer,
    };
    let next = page.next.as_ref().map(encode_cursor);
    Ok(pages::messages(
        Lang::En,
        &who,
        BASE,
        &SearchForm::default(),
        &page.records,
        next,
        None,
    )
    .into_string())
}

/// The console's search form as API query parameters: empty fields left out, `since` and
/// `until` from the browser's `datetime-local` (UTC) to RFC 3339, `lang` dropped.
fn search_query(query: &str) -> Result<(SearchForm, String), ApiError> {
    let mut form = SearchForm::default();
    let mut api = Vec::new();
    for (k, v) in parse_query(query)? {
        if v.is_empty() || k == "lang" {
            continue;
        }
        let value = match k.as_str() {
            "since" | "until" => {
                let t = parse_local_time(&v, &k)?;
                messages::rfc3339(t)
            }
            _ => v.clone(),
        };
        if k != "after" {
            form.values.insert(k.clone(), v);
        }
        api.push(format!("{}={}", enc(&k), enc(&value)));
    }
    Ok((form, api.join("&")))
}

/// A time from a form: `datetime-local` (`2026-12-05T20:00`, seconds optional; UTC) or RFC 3339.
fn parse_local_time(value: &str, what: &str) -> Result<OffsetDateTime, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let candidates = [
        value.to_owned(),
        format!("{value}Z"),
        format!("{value}:00Z"),
    ];
    candidates
        .iter()
        .find_map(|c| OffsetDateTime::parse(c, &Rfc3339).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                format!("{what} `{value}` is not a time"),
                "give e.g. 2026-12-05T20:00 (UTC)",
            )
        })
}

fn context(request: &Request<Incoming>) -> Ctx {
    let mut cookies = BTreeMap::new();
    for value in request.headers().get_all(header::COOKIE) {
        for pair in value.to_str().unwrap_or("").split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                // The first of a name wins (the most specific path, as browsers order them).
                cookies.entry(k.to_owned()).or_insert_with(|| v.to_owned());
            }
        }
    }
    let query = request.uri().query().unwrap_or("").to_owned();
    let asked = parse_query(&query)
        .ok()
        .and_then(|q| q.into_iter().find(|(k, _)| k == "lang"))
        .and_then(|(_, v)| Lang::parse(&v));
    let lang = asked
        .or_else(|| cookies.get(LANG_COOKIE).and_then(|v| Lang::parse(v)))
        .or_else(|| {
            request
                .headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .find_map(|item| Lang::parse(item.split(';').next().unwrap_or("")))
                })
        })
        .unwrap_or(Lang::En);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("lang="))
        .collect();
    let here = if kept.is_empty() {
        request.uri().path().to_owned()
    } else {
        format!("{}?{}", request.uri().path(), kept.join("&"))
    };
    Ctx {
        lang,
        set_lang: asked.is_some(),
        cookies,
        query,
        here,
    }
}

/// Whether `origin` names the host the request was sent to (`Host`, or HTTP/2's
/// `:authority`).
fn same_origin(origin: &HeaderValue, request: &Request<Incoming>) -> bool {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && rest.eq_ignore_ascii_case(host)
}

async fn read_form(request: Request<Incoming>) -> Result<BTreeMap<String, String>, String> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_FORM);
    let body: Bytes = tokio::time::timeout(Duration::from_secs(30), limited.collect())
        .await
        .map_err(|_| "the form took too long to arrive".to_owned())?
        .map_err(|e| format!("the form could not be read: {e}"))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| "the form is not UTF-8".to_owned())?;
    Ok(parse_query(text)
        .map_err(|e| e.error)?
        .into_iter()
        .collect())
}

fn secure_headers(headers: &mut HeaderMap, tls: bool) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
}

fn html_response(status: StatusCode, page: maud::Markup) -> Response<Body> {
    let mut r = Response::new(full(page.into_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

fn subject_of(cert: &openssl::x509::X509) -> String {
    name_of(cert.subject_name())
}

fn name_of(name: &openssl::x509::X509NameRef) -> String {
    name.entries()
        .filter_map(|e| {
            let key = e.object().nid().short_name().ok()?;
            let value = e.data().to_string().ok()?;
            Some(format!("{key}={value}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn days_left(cert: &openssl::x509::X509, now: OffsetDateTime) -> i64 {
    let Ok(now) = openssl::asn1::Asn1Time::from_unix(now.unix_timestamp()) else {
        return 0;
    };
    now.diff(cert.not_after())
        .map(|d| i64::from(d.days))
        .unwrap_or(0)
}

fn cert_view(usage: &str, cert: &openssl::x509::X509, now: OffsetDateTime) -> pages::CertView {
    let key = cert
        .public_key()
        .map(|k| {
            let kind = match k.id() {
                openssl::pkey::Id::RSA => "RSA",
                openssl::pkey::Id::EC => "EC",
                openssl::pkey::Id::ED25519 => "Ed25519",
                openssl::pkey::Id::X25519 => "X25519",
                _ => "other",
            };
            format!("{kind} {}", k.bits())
        })
        .unwrap_or_else(|_| "?".into());
    pages::CertView {
        usage: usage.to_owned(),
        subject: subject_of(cert),
        issuer: name_of(cert.issuer_name()),
        not_after: cert.not_after().to_string(),
        key,
        days_left: days_left(cert, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_form_becomes_the_api_query() {
        let (form, q) =
            search_query("partner=red&since=2026-12-05T20%3A00&state=&lang=lv&direction=outbound")
                .unwrap();
        assert_eq!(
            q,
            "partner=red&since=2026-12-05T20%3A00%3A00Z&direction=outbound"
        );
        assert_eq!(
            form.values.get("since").map(String::as_str),
            Some("2026-12-05T20:00")
        );
        assert!(search_query("since=yesterday").is_err());
    }
}
