//! The operations console over real HTTP against a real `varti serve` (console on the
//! backend listener): the login page at /console/, nothing without a session, CSRF tokens
//! on every form, the roles, session fixation, logout, the security headers, and the
//! audit trail of it all.

mod console_support;
mod serve_support;

use console_support::{audit_entries, csrf_of, enc, http, start, Answer, Node, PASSWORD};

const SESSION: &str = "__Host-varti-console";
const LOGIN: &str = "__Host-varti-console-login";

/// A browser-like session: its cookie, and a fresh CSRF token from a page.
struct Session {
    cookie: String,
}

fn get(node: &Node, path: &str, cookie: Option<&str>) -> Answer {
    let mut headers = Vec::new();
    if let Some(c) = cookie {
        headers.push(("Cookie", format!("{SESSION}={c}")));
    }
    http(node.console, "GET", path, &headers, b"")
}

fn post(node: &Node, path: &str, cookie: Option<&str>, form: &str) -> Answer {
    let mut headers = vec![(
        "Content-Type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(c) = cookie {
        headers.push(("Cookie", format!("{SESSION}={c}")));
    }
    http(node.console, "POST", path, &headers, form.as_bytes())
}

/// Logs in as `user` (bringing `old` as the session cookie, if given).
fn log_in(node: &Node, user: &str, old: Option<&str>) -> Answer {
    let page = get(node, "/console/", None);
    let token = page
        .cookie(LOGIN)
        .expect("the login page sets its CSRF cookie");
    let csrf = csrf_of(&page.body_text());
    let mut cookie = format!("{LOGIN}={token}");
    if let Some(old) = old {
        cookie.push_str(&format!("; {SESSION}={old}"));
    }
    http(
        node.console,
        "POST",
        "/console/login",
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("Cookie", cookie),
        ],
        format!(
            "csrf={csrf}&user={user}&password={}",
            PASSWORD.replace(' ', "+")
        )
        .as_bytes(),
    )
}

fn session(node: &Node, user: &str) -> Session {
    let r = log_in(node, user, None);
    assert_eq!(r.status, 303, "login as {user}: {}", r.text());
    Session {
        cookie: r.cookie(SESSION).expect("a session cookie"),
    }
}

fn csrf(node: &Node, s: &Session) -> String {
    csrf_of(&get(node, "/console/messages", Some(&s.cookie)).body_text())
}

#[test]
fn login_sessions_csrf_roles_headers_and_audit() {
    let node = start("");
    assert_eq!(node.console, node.backend, "served on the backend listener");
    let id = enc(&node.waiting);
    let message = format!("/console/messages/{id}");

    // The login page, with the security headers; no HSTS over plain HTTP.
    let page = get(&node, "/console/", None);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.body_text().contains("id=\"login\""), "{}", page.text());
    let csp = page.header("content-security-policy").expect("a CSP");
    for part in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "style-src 'self'",
    ] {
        assert!(csp.contains(part), "CSP lacks {part}: {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(page.header("strict-transport-security"), None);
    assert!(!page.body_text().contains("<script"), "no script at all");
    // The API next door still answers as before.
    assert_eq!(
        http(node.backend, "GET", "/api/v1/status", &[], b"").status,
        401
    );

    // Nothing without a session: pages and downloads send to the login; acts are refused.
    for path in [
        "/console/messages".to_owned(),
        message.clone(),
        format!("{message}/payloads/0"),
        "/console/audit".to_owned(),
        "/console/partners".to_owned(),
    ] {
        let r = get(&node, &path, None);
        assert_eq!(r.status, 303, "{path}: {}", r.text());
        assert_eq!(r.header("location").as_deref(), Some("/console/"), "{path}");
        assert!(!r.body_text().contains(&node.waiting), "{path} leaks");
        // A made-up session is no session.
        assert_eq!(get(&node, &path, Some("made-up")).status, 303, "{path}");
    }
    let r = post(&node, &format!("{message}/retry"), None, "csrf=x");
    assert_eq!(r.status, 403, "{}", r.text());

    // A login without the login form's token is refused; a wrong password is 401.
    let r = post(
        &node,
        "/console/login",
        None,
        &format!("user=admin&password={}", PASSWORD.replace(' ', "+")),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.cookie(SESSION), None);
    let page = get(&node, "/console/", None);
    let r = http(
        node.console,
        "POST",
        "/console/login",
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("Cookie", format!("{LOGIN}={}", page.cookie(LOGIN).unwrap())),
        ],
        format!(
            "csrf={}&user=operator&password=wrong",
            csrf_of(&page.body_text())
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.body_text().contains("login-error"));
    assert_eq!(r.cookie(SESSION), None);

    // Session fixation: a session value the browser brings is never adopted; a login
    // always issues a new one and ends the one the browser had.
    let r = log_in(&node, "viewer", Some("attacker-chosen-value"));
    assert_eq!(r.status, 303, "{}", r.text());
    let viewer = r.cookie(SESSION).unwrap();
    assert_ne!(viewer, "attacker-chosen-value");
    let set = r
        .headers("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{SESSION}=")))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "session cookie lacks {attr}: {set}");
    }
    assert_eq!(
        get(&node, "/console/messages", Some("attacker-chosen-value")).status,
        303
    );
    let again = log_in(&node, "viewer", Some(&viewer));
    let viewer2 = again.cookie(SESSION).unwrap();
    assert_ne!(viewer2, viewer);
    assert_eq!(
        get(&node, "/console/messages", Some(&viewer)).status,
        303,
        "the old session ended"
    );
    let viewer = Session { cookie: viewer2 };

    // The viewer reads: the search by partner finds the message, its page shows it, but
    // no download link, and downloading and acting are refused (403).
    let r = get(
        &node,
        "/console/messages?partner=varti-b&direction=outbound",
        Some(&viewer.cookie),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body_text().contains(&node.waiting), "{}", r.body_text());
    let r = get(
        &node,
        "/console/messages?partner=nobody",
        Some(&viewer.cookie),
    );
    assert!(!r.body_text().contains(&node.waiting));
    let r = get(&node, &message, Some(&viewer.cookie));
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("waiting_for_retry"));
    assert!(
        !r.body_text().contains("/payloads/0"),
        "a viewer gets no download link"
    );
    assert!(
        !r.body_text().contains("do-retry"),
        "a viewer gets no retry button"
    );
    assert_eq!(
        get(
            &node,
            &format!("{message}/payloads/0"),
            Some(&viewer.cookie)
        )
        .status,
        403
    );
    let token = csrf(&node, &viewer);
    let r = post(
        &node,
        &format!("{message}/retry"),
        Some(&viewer.cookie),
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post(
        &node,
        "/console/admin/purge",
        Some(&viewer.cookie),
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 403);

    // The partners and PModes pages read the set in force.
    let r = get(&node, "/console/partners", Some(&viewer.cookie));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body_text().contains("varti-b") && r.body_text().contains("days left"));
    let r = get(&node, "/console/pmodes", Some(&viewer.cookie));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.body_text().contains("exchange/deliver"),
        "{}",
        r.body_text()
    );
    assert!(r.body_text().contains("id=\"diagnostics\""));
    assert!(
        !r.body_text().contains("admin/reload"),
        "no reload button for a viewer"
    );

    // The operator acts, but only with the session's CSRF token and from this origin.
    let operator = session(&node, "operator");
    let r = post(
        &node,
        &format!("{message}/retry"),
        Some(&operator.cookie),
        "",
    );
    assert_eq!(r.status, 403, "no token: {}", r.text());
    let r = post(
        &node,
        &format!("{message}/retry"),
        Some(&operator.cookie),
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 403, "another session's token: {}", r.text());
    let token = csrf(&node, &operator);
    let r = http(
        node.console,
        "POST",
        &format!("{message}/retry"),
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("Cookie", format!("{SESSION}={}", operator.cookie)),
            ("Origin", "https://evil.example".to_owned()),
        ],
        format!("csrf={token}").as_bytes(),
    );
    assert_eq!(r.status, 403, "a foreign origin: {}", r.text());
    assert_eq!(
        console_support::api_message(&node, &node.waiting)["attempts"],
        1,
        "nothing was retried yet"
    );
    let r = post(
        &node,
        &format!("{message}/retry"),
        Some(&operator.cookie),
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.header("location").unwrap(),
        format!("{message}?done=retry")
    );
    let m = console_support::api_message(&node, &node.waiting);
    let retried = m["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["event"] == "retry_now");
    assert!(retried.is_some(), "{m:#}");
    let r = get(
        &node,
        &format!("{message}/payloads/0"),
        Some(&operator.cookie),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_text(), "hello from the console test");
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    assert!(r.header("content-security-policy").is_some());

    // Logout ends the session on the server and clears the cookie.
    let r = post(
        &node,
        "/console/logout",
        Some(&operator.cookie),
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.cookie(SESSION).as_deref(), Some(""));
    assert!(r
        .headers("set-cookie")
        .iter()
        .any(|c| c.contains("Max-Age=0")));
    assert_eq!(
        get(&node, "/console/messages", Some(&operator.cookie)).status,
        303
    );

    // Every login and act is in the audit trail, and the console shows it.
    let entries = audit_entries(&node);
    let has = |actor: &str, action: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
    };
    assert!(
        has("console:operator", "console.login", "refused"),
        "{entries:#?}"
    );
    assert!(has("console:viewer", "console.login", "ok"));
    assert!(has("console:viewer", "message.download", "refused"));
    assert!(has("console:viewer", "message.retry", "refused"));
    assert!(has("console:operator", "message.retry", "ok"));
    assert!(has("console:operator", "message.download", "ok"));
    assert!(has("console:operator", "console.logout", "ok"));
    assert!(has("local", "console.user.add", "ok"));
    let r = get(
        &node,
        "/console/audit?actor=console%3Aoperator",
        Some(&viewer.cookie),
    );
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("message.retry"), "{}", r.body_text());
    assert!(
        !r.body_text().contains("console:viewer"),
        "filtered by actor"
    );
}
