//! The preview listener's routes: the citizen's pages under `/preview/…` and, when enabled,
//! the test identity provider under `/test-idp/…`.
//!
//! A link is `/preview/{id}.{secret}`: the id finds the preview, the secret (only its
//! SHA-256 is kept) proves the link was given out. Every page is `no-store`, sends no
//! Referer (the link is a secret) and may not be framed by another site.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::pages::{self, Lang, ShownEvidence};
use super::{blocking, random_token, Login, PreviewSpace, PreviewState, Session, LOGIN_TTL};
use time::OffsetDateTime;
use varti_access_point::server::http::{full, reader_body, Body};
use varti_access_point::server::{PeerInfo, RouteFuture, Routes};

/// The cookie that carries a login in progress (its value is the OAuth `state`).
const LOGIN_COOKIE: &str = "varti_login";
/// Largest form accepted (the decision form, the test IdP's forms).
const MAX_FORM: usize = 16 * 1024;

/// The routes of the preview listener.
pub struct PreviewRoutes {
    space: Arc<PreviewSpace>,
}

impl PreviewRoutes {
    /// Routes of `space`.
    pub fn new(space: Arc<PreviewSpace>) -> PreviewRoutes {
        PreviewRoutes { space }
    }
}

/// `Strict-Transport-Security` of every answer when the pages are reached over HTTPS
/// (`preview.tls`, or an `https://` public URL behind a TLS proxy): one year, this host
/// only (the preview's domain may hold other sites).
const HSTS: &str = "max-age=31536000";

impl Routes for PreviewRoutes {
    fn call(&self, request: Request<Incoming>, _peer: PeerInfo) -> RouteFuture {
        let config = &self.space.config;
        let https = config.tls || config.public_url.starts_with("https://");
        let response = self.route(request);
        Box::pin(async move {
            let mut response = response.await;
            if https {
                response.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS),
                );
            }
            response
        })
    }
}

impl PreviewRoutes {
    /// The answer to one request, before the headers every answer gets.
    fn route(&self, request: Request<Incoming>) -> RouteFuture {
        let space = self.space.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let method = request.method().clone();
            if let Some(rest) = path.strip_prefix("/test-idp") {
                return test_idp(&space, rest, request).await;
            }
            match (method, path.as_str()) {
                (Method::GET, "/preview/callback") => callback(&space, request).await,
                (Method::GET, "/health") => plain(StatusCode::OK, "ok\n"),
                (m, p) if p.starts_with("/preview/") => {
                    let rest = &p["/preview/".len()..];
                    let (link, tail) = rest.split_once('/').unwrap_or((rest, ""));
                    let link = link.to_owned();
                    match (m, tail) {
                        (Method::GET, "") => blocking(|| entry(&space, &link, request)),
                        (Method::GET, t) if t.starts_with("evidence/") => {
                            let rest = &t["evidence/".len()..];
                            let download = request.uri().query() == Some("download=1");
                            blocking(|| match rest.strip_suffix("/view") {
                                Some(n) => evidence_view(&space, &link, n, request.headers()),
                                None => evidence(&space, &link, rest, download, request.headers()),
                            })
                        }
                        (Method::POST, "decision") => decision(&space, &link, request).await,
                        _ => not_found(),
                    }
                }
                _ => not_found(),
            }
        })
    }
}

/// `GET /preview/{link}`: the evidence page for the bound browser, a login for a fresh link,
/// or the page that says why not.
fn entry(space: &PreviewSpace, link: &str, request: Request<Incoming>) -> Response<Body> {
    let headers = request.headers();
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let now = space.clock.now();
    // An explicit ?lang= always wins; the browser's languages choose only on the first visit
    // (the way back from the identity provider must not switch the language chosen).
    let found = find(space, link, |session, _| {
        if let Some(l) = query.get("lang") {
            session.language = Some(Lang::from_tag(l));
        } else if session.language.is_none() {
            session.language = request_lang(&query, headers);
        }
    });
    let Some(session) = found else {
        let lang = request_lang(&query, headers).unwrap_or(Lang::En);
        return invalid_link(lang);
    };
    let session = &session;
    let lang = session.language.unwrap_or(Lang::En);
    if let Some(r) = ended_page(session) {
        return r;
    }
    let t = pages::text(lang);
    let cookie_name = session_cookie(&session.id);
    match (session.bound_cookie_sha256, cookie(headers, &cookie_name)) {
        (Some(bound), Some(value))
            if openssl::memcmp::eq(&bound, &openssl::sha::sha256(value.as_bytes())) =>
        {
            let base = format!("/preview/{link}");
            let Some(local) = space.local_evidence(session) else {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the evidence cannot be read now; try again in a moment\n",
                );
            };
            let shown: Vec<ShownEvidence<'_>> = local
                .iter()
                .enumerate()
                .map(|(i, e)| ShownEvidence {
                    title: &e.title,
                    media_type: &e.media_type,
                    href: format!("{base}/evidence/{i}"),
                    path: &e.path,
                    transformed: e.html.is_some(),
                })
                .collect();
            let other = match lang {
                Lang::En => "lv",
                Lang::Lv => "en",
            };
            let html = pages::evidence_page(
                lang,
                &session.request.requester,
                session.request.procedure.as_deref(),
                &shown,
                &format!("{base}/decision"),
                &session.form_token,
                &format!("{base}?lang={other}"),
            );
            html_response(StatusCode::OK, html)
        }
        (Some(_), _) => {
            tracing::warn!(preview = %session.id, "a used preview link was opened in another browser");
            html_response(
                StatusCode::FORBIDDEN,
                pages::message_page(lang, t.used_title, t.used, None),
            )
        }
        (None, _) => {
            // A fresh link: log in first.
            let state = random_token();
            let nonce = random_token();
            let verifier = random_token();
            let location = space
                .oidc
                .authorize_redirect(&state, &nonce, &verifier, lang.code());
            let login = Login {
                session_id: session.id.clone(),
                nonce,
                pkce_verifier: verifier,
                started: now,
                link: link.to_owned(),
            };
            let stored = serde_json::to_vec(&login)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    space
                        .store
                        .put_preview_record(&login_key(&state), &bytes, now + LOGIN_TTL)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = stored {
                tracing::error!(preview = %session.id, error = %e, "cannot store a login in progress");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the login cannot start now; try again in a moment\n",
                );
            }
            let mut response = redirect(&location);
            set_cookie(
                &mut response,
                space,
                LOGIN_COOKIE,
                &state,
                LOGIN_TTL.whole_seconds(),
            );
            response
        }
    }
}

/// `GET /preview/callback?code&state`: back from the identity provider.
async fn callback(space: &PreviewSpace, request: Request<Incoming>) -> Response<Body> {
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let lang = Lang::from_accept_language(
        request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    )
    .unwrap_or(Lang::En);
    let failed = |lang: Lang, why: &str| {
        tracing::warn!(reason = %why, "preview login failed");
        let t = pages::text(lang);
        html_response(
            StatusCode::BAD_REQUEST,
            pages::message_page(lang, t.login_failed_title, t.login_failed, None),
        )
    };
    let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
        let why = query
            .get("error")
            .map(|e| format!("the identity provider answered `{e}`"))
            .unwrap_or_else(|| "the callback has no code or state".into());
        return failed(lang, &why);
    };
    // The state must be the one this browser started with (no login forced on someone).
    let from_this_browser = cookie(request.headers(), LOGIN_COOKIE).is_some_and(|c| {
        c.len() == state.len() && openssl::memcmp::eq(c.as_bytes(), state.as_bytes())
    });
    if !from_this_browser {
        return failed(lang, "the login was not started in this browser");
    }
    let Some(login) = blocking(|| take_login(space, state)) else {
        return failed(lang, "unknown or already used login state");
    };
    if space.clock.now() - login.started > LOGIN_TTL {
        return failed(lang, "the login took too long");
    }
    let lang = blocking(|| space.load(&login.session_id))
        .and_then(|(_, s)| s.language)
        .unwrap_or(lang);
    let person = match space
        .oidc
        .login(code, &login.pkce_verifier, &login.nonce)
        .await
    {
        Ok(p) => p,
        Err(e) => return failed(lang, &e.to_string()),
    };

    // The link becomes this browser's, if it is still free and the person is right.
    let secret = random_token();
    let bound = blocking(|| {
        space.update(&login.session_id, |session, _| {
            let ok = session.state == PreviewState::Pending
                && session.bound_cookie_sha256.is_none()
                && session.request.person.matches(&person);
            if ok {
                session.bound_cookie_sha256 = Some(openssl::sha::sha256(secret.as_bytes()));
            }
            ok
        })
    });
    let Some((session, bound)) = bound else {
        return invalid_link(lang);
    };
    let session = &session;
    if let Some(r) = ended_page(session) {
        return r;
    }
    let t = pages::text(lang);
    if !bound && session.bound_cookie_sha256.is_some() {
        return html_response(
            StatusCode::FORBIDDEN,
            pages::message_page(lang, t.used_title, t.used, None),
        );
    }
    if !bound {
        tracing::warn!(preview = %session.id, reference = %session.request.reference, "preview refused: the person who logged in is not the one the evidence is about");
        return html_response(
            StatusCode::FORBIDDEN,
            pages::message_page(lang, t.wrong_person_title, t.wrong_person, None),
        );
    }
    tracing::info!(preview = %session.id, reference = %session.request.reference, "preview link bound to the authenticated person");
    let remaining = (session.expires_at - space.clock.now())
        .whole_seconds()
        .max(1);
    let mut response = redirect(&format!("/preview/{}", login.link));
    set_cookie(
        &mut response,
        space,
        &session_cookie(&session.id),
        &secret,
        remaining,
    );
    set_cookie(&mut response, space, LOGIN_COOKIE, "", 0);
    response
}

/// The evidence `n` of the pending preview `link`, for the bound browser only.
fn shown_evidence(
    space: &PreviewSpace,
    link: &str,
    n: &str,
    headers: &HeaderMap,
) -> Option<super::PreviewEvidence> {
    let session = find(space, link, |_, _| ())?;
    if session.state != PreviewState::Pending || !bound_here(&session, headers) {
        return None;
    }
    let n = n.parse::<usize>().ok()?;
    if n >= session.request.evidences.len() {
        return None;
    }
    space.local_evidence(&session)?.into_iter().nth(n)
}

/// `GET /preview/{link}/evidence/{n}/view`: the HTML a stylesheet made of an XML evidence.
/// It may run nothing and fetch nothing (CSP `default-src 'none'`, `sandbox`, inline
/// styles and `data:` images only), and only our own page may frame it.
fn evidence_view(space: &PreviewSpace, link: &str, n: &str, headers: &HeaderMap) -> Response<Body> {
    let Some(html) = shown_evidence(space, link, n, headers).and_then(|e| e.html) else {
        return not_found();
    };
    let Ok(text) = std::fs::read(&html) else {
        return not_found();
    };
    let mut response = Response::new(full(Bytes::from(text)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; form-action 'none'; base-uri 'none'; frame-ancestors 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    common_headers(h);
    response
}

/// `GET /preview/{link}/evidence/{n}`: one evidence file, for the bound browser only
/// (`?download=1`: as an attachment, e.g. the original of a transformed XML evidence).
fn evidence(
    space: &PreviewSpace,
    link: &str,
    n: &str,
    download: bool,
    headers: &HeaderMap,
) -> Response<Body> {
    let Some(e) = shown_evidence(space, link, n, headers) else {
        return not_found();
    };
    let Ok(file) = std::fs::File::open(&e.path) else {
        return not_found();
    };
    let length = file.metadata().ok().map(|m| m.len());
    let mut response = Response::new(reader_body(Box::new(file), length).boxed());
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&e.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    let disposition = if download {
        let ext = if e.media_type.ends_with("xml") {
            "xml"
        } else {
            "bin"
        };
        HeaderValue::from_str(&format!("attachment; filename=\"evidence-{n}.{ext}\""))
            .unwrap_or(HeaderValue::from_static("attachment"))
    } else {
        HeaderValue::from_static("inline")
    };
    h.insert(header::CONTENT_DISPOSITION, disposition);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Only our own page may show it in a frame; nothing in it may run.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; frame-ancestors 'self'"),
    );
    common_headers(h);
    response
}

/// `POST /preview/{link}/decision`: approve or cancel.
async fn decision(space: &PreviewSpace, link: &str, request: Request<Incoming>) -> Response<Body> {
    let headers = request.headers().clone();
    let form = match read_form(request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let params: HashMap<String, String> = form_urlencoded::parse(&form).into_owned().collect();
    let state = match params.get("decision").map(String::as_str) {
        Some("approve") => PreviewState::Approved,
        Some("cancel") => PreviewState::Cancelled,
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                "decision must be approve or cancel\n",
            )
        }
    };
    // Decided only while pending, by the bound browser with the form's token.
    let mut allowed = false;
    let found = blocking(|| {
        find(space, link, |session, now| {
            allowed = false;
            if session.state != PreviewState::Pending {
                return;
            }
            let token_ok = params.get("token").is_some_and(|tok| {
                tok.len() == session.form_token.len()
                    && openssl::memcmp::eq(tok.as_bytes(), session.form_token.as_bytes())
            });
            if bound_here(session, &headers) && token_ok {
                allowed = true;
                session.state = state;
                session.decided_at = Some(now);
            }
        })
    });
    let Some(session) = found else {
        return invalid_link(Lang::En);
    };
    if allowed {
        tracing::info!(preview = %session.id, reference = %session.request.reference, decision = state.as_str(), "preview decided");
        return ended_page(&session).expect("decided");
    }
    if let Some(r) = ended_page(&session) {
        return r;
    }
    let lang = session.language.unwrap_or(Lang::En);
    let t = pages::text(lang);
    html_response(
        StatusCode::FORBIDDEN,
        pages::message_page(lang, t.used_title, t.used, None),
    )
}

/// The page of a preview that is no longer pending.
fn ended_page(session: &Session) -> Option<Response<Body>> {
    let lang = session.language.unwrap_or(Lang::En);
    let t = pages::text(lang);
    let back = session.request.return_url.as_deref();
    let (status, title, body) = match session.state {
        PreviewState::Pending => return None,
        PreviewState::Approved => (StatusCode::OK, t.title, t.approved),
        PreviewState::Cancelled => (StatusCode::OK, t.title, t.cancelled),
        PreviewState::Expired => (StatusCode::GONE, t.expired_title, t.expired),
    };
    Some(html_response(
        status,
        pages::message_page(lang, title, body, back),
    ))
}

/// The test identity provider's endpoints.
async fn test_idp(space: &PreviewSpace, rest: &str, request: Request<Incoming>) -> Response<Body> {
    let Some(idp) = space.test_idp.clone() else {
        return not_found();
    };
    let method = request.method().clone();
    match (method, rest) {
        (Method::GET, "/authorize") => {
            match idp.authorize_page(request.uri().query().unwrap_or("")) {
                Ok(html) => html_response(StatusCode::OK, html),
                Err(why) => plain(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            }
        }
        (Method::POST, "/login") => match read_form(request).await {
            Ok(form) => match idp.login(&form) {
                Ok(location) => redirect(&location),
                Err(why) => plain(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            },
            Err(r) => r,
        },
        (Method::POST, "/token") => {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match read_form(request).await {
                Ok(form) => match idp.token(&form, authorization.as_deref()) {
                    Ok(json) => json_text(StatusCode::OK, json),
                    Err(code) => json_text(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": code}).to_string(),
                    ),
                },
                Err(r) => r,
            }
        }
        (Method::GET, "/jwks") => json_text(StatusCode::OK, idp.jwks()),
        _ => not_found(),
    }
}

/// The session a link names, if its secret is right, after `change` (stored, see
/// [`PreviewSpace::update`]).
fn find(
    space: &PreviewSpace,
    link: &str,
    mut change: impl FnMut(&mut Session, OffsetDateTime),
) -> Option<Session> {
    let (id, secret) = link.split_once('.')?;
    let (_, session) = space.load(id)?;
    let presented = openssl::sha::sha256(secret.as_bytes());
    if !openssl::memcmp::eq(&presented, &session.link_sha256) {
        return None;
    }
    space.update(id, |s, now| change(s, now)).map(|(s, ())| s)
}

fn login_key(state: &str) -> String {
    format!("l/{state}")
}

/// Takes (single use) the login in progress `state`, from whichever instance started it.
fn take_login(space: &PreviewSpace, state: &str) -> Option<Login> {
    // Every state is a 43-character token: no state is the prefix of another.
    if state.len() != 43 {
        return None;
    }
    let key = login_key(state);
    let bytes = space.store.preview_record(&key).ok()??;
    match space.store.remove_preview_records(&key) {
        Ok(1) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

/// Whether the request comes from the browser the link is bound to.
fn bound_here(session: &Session, headers: &HeaderMap) -> bool {
    match (
        session.bound_cookie_sha256,
        cookie(headers, &session_cookie(&session.id)),
    ) {
        (Some(bound), Some(value)) => {
            openssl::memcmp::eq(&bound, &openssl::sha::sha256(value.as_bytes()))
        }
        _ => false,
    }
}

fn session_cookie(id: &str) -> String {
    format!("varti_preview_{id}")
}

fn request_lang(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<Lang> {
    if let Some(l) = query.get("lang") {
        return Some(Lang::from_tag(l));
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(Lang::from_accept_language)
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

fn set_cookie(
    response: &mut Response<Body>,
    space: &PreviewSpace,
    name: &str,
    value: &str,
    max_age: i64,
) {
    let secure = if space.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let text =
        format!("{name}={value}; Path=/preview; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    if let Ok(v) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

async fn read_form(request: Request<Incoming>) -> Result<Vec<u8>, Response<Body>> {
    let mut body = varti_access_point::server::http::timed_body(request);
    let mut form = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(plain(
                StatusCode::BAD_REQUEST,
                "the form could not be read\n",
            ));
        };
        if let Ok(data) = frame.into_data() {
            if form.len() + data.len() > MAX_FORM {
                return Err(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the form is too large\n",
                ));
            }
            form.extend_from_slice(&data);
        }
    }
    Ok(form)
}

fn common_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(html)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    common_headers(h);
    response
}

fn json_text(status: StatusCode, json: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(json)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    common_headers(h);
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    common_headers(response.headers_mut());
    response
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    common_headers(response.headers_mut());
    response
}

fn invalid_link(lang: Lang) -> Response<Body> {
    let t = pages::text(lang);
    html_response(
        StatusCode::NOT_FOUND,
        pages::message_page(lang, t.invalid_title, t.invalid, None),
    )
}

fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found\n")
}
