//! Reload without restart and the audit trail (issue 14), on real `varti serve` processes:
//!
//! * `varti reload` puts a changed PMode set in force (a leg that was refused before is
//!   served after), refuses a broken set with the errors printed and exit status 1 and
//!   keeps the old set, and refuses a token that is not an admin's (exit 2);
//! * `varti audit list` shows the start-up load with the files' SHA-256 and every reload,
//!   pages, filters by time and is for admins only;
//! * SIGHUP reloads a running `varti serve` (which does not die of it);
//! * a changed PMode set is reloaded on a running pair on PostgreSQL under load, one
//!   instance after the other on both sides: nothing lost, nothing duplicated, and each
//!   side's shared audit trail shows both of its reloads.

mod chaos_support;
mod common;
mod pair_support;
mod serve_support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::*;
use pair_support::{exchange_pmodes, Node, Pair};
use serde_json::{json, Value};
use varti::pair::token_sha256;
use varti_store::postgres::testing::TestSchema;

/// The administrators' API token in these tests.
const ADMIN_TOKEN: &str = "admin-token-for-reload-tests";

/// A `[[backend.clients]]` entry for an admin client `ops` (appended after `portal`).
fn admin_client() -> String {
    format!(
        "[[backend.clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nadmin = true\n",
        token_sha256(ADMIN_TOKEN)
    )
}

/// Fast retries and polling.
const SENDER: &str = "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
    [sender]\npoll_interval_ms = 100\nlease_secs = 30\n";

/// The service of the leg the changed PMode set adds.
const NEW_SERVICE: &str = "urn:varti:test:reloaded";

/// The process the changed PMode set adds: one-way push varti-a → varti-b on
/// [`NEW_SERVICE`].
fn new_process() -> String {
    varti::pair::process_toml(
        "reloaded",
        "push",
        [&["varti-a"], &["varti-b"]],
        &[["deliver", NEW_SERVICE, "Deliver"]],
        "",
    )
}

/// Submits a small message on `service` through `node`'s API: the HTTP status and body.
fn submit_on(node: &Node, service: &str) -> (u16, String) {
    let boundary = "varti-reload-boundary";
    let meta = json!({
        "to_party": "varti-b",
        "service": service,
        "action": "Deliver",
        "payloads": [{"part": "body", "mime_type": "text/plain"}],
    });
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"body\"; filename=\"b.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    );
    let r = node.api(
        "POST",
        "/api/v1/messages",
        Some(&format!("multipart/form-data; boundary={boundary}")),
        body.as_bytes(),
    );
    (r.status, r.body)
}

/// `varti` with the API options of `node` and `token`.
fn cli(node: &Node, token: &str, args: &[&str]) -> (i32, String, String) {
    let api = format!("http://{}", node.backend);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api", &api, "--token", token]);
    common::varti(&all)
}

/// The whole audit trail of `node` (admin token), oldest first.
fn trail(node: &Node) -> Vec<Value> {
    let r = node.api_as(ADMIN_TOKEN, "GET", "/api/v1/audit?limit=1000", None, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["entries"].as_array().cloned().unwrap()
}

/// One node of a pair (sled store) with the admin client; the pair root for its PModes.
fn start_single() -> (Pair, Node) {
    let pair = Pair::create(
        ("exchange.toml", exchange_pmodes()),
        None,
        &(admin_client() + SENDER),
    );
    let node = pair.start("a");
    (pair, node)
}

#[test]
fn reload_applies_a_good_pmode_set_and_keeps_the_old_one_on_a_bad_one() {
    let (pair, a) = start_single();
    let pmodes = pair.layout.root.join("pmodes");

    // The start-up load is audited with every file's SHA-256.
    let (code, out, err) = cli(&a, ADMIN_TOKEN, &["audit", "list", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let load = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "config.load")
        .cloned()
        .unwrap_or_else(|| panic!("no config.load entry: {listed:#}"));
    assert_eq!(load["actor"], "local");
    assert_eq!(load["outcome"], "ok");
    let exchange = pmodes.join("exchange.toml").canonicalize().unwrap();
    let exchange_key = exchange.display().to_string();
    let sha_before = load["details"]["files"]["pmode"][&exchange_key]
        .as_str()
        .unwrap_or_else(|| panic!("no hash of {exchange_key}: {load:#}"))
        .to_owned();
    assert_eq!(
        sha_before,
        token_sha256(&std::fs::read_to_string(&exchange).unwrap())
    );
    assert!(load["details"]["files"]["config"].is_object(), "{load:#}");
    assert!(
        load["details"]["files"]["identity.signing_cert"].is_object(),
        "{load:#}"
    );

    // No leg for the new service yet.
    let (status, body) = submit_on(&a, NEW_SERVICE);
    assert_eq!(status, 422, "{body}");

    // A changed PMode set: `varti reload` puts it in force and says what changed.
    std::fs::write(&exchange, exchange_pmodes() + &new_process()).unwrap();
    let (code, out, err) = cli(&a, ADMIN_TOKEN, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reloaded (generation 2)"), "{out}");
    assert!(
        out.contains(&format!("changed pmode {exchange_key}")),
        "{out}"
    );
    let (status, body) = submit_on(&a, NEW_SERVICE);
    assert_eq!(
        status, 201,
        "the new leg is served after the reload: {body}"
    );

    // What only a restart applies is said, not ignored.
    let slower = SENDER.replace("poll_interval_ms = 100", "poll_interval_ms = 250");
    pair.layout
        .rewrite_config(&pair.layout.a, &(admin_client() + &slower))
        .unwrap();
    let (code, out, err) = cli(&a, ADMIN_TOKEN, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reloaded (generation 3)"), "{out}");
    assert!(out.contains("changed config "), "{out}");
    assert!(out.contains("needs restart: [sender]"), "{out}");

    // A broken set: refused, the errors printed, exit 1, the old set kept.
    let broken = pmodes.join("broken.toml");
    std::fs::write(&broken, "[[process]]\nname = \"broken\"\nmep = 7\n").unwrap();
    let (code, out, err) = cli(&a, ADMIN_TOKEN, &["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("broken.toml"),
        "the error names the file: {err}"
    );
    assert!(err.contains("stay in force"), "{err}");
    let (status, body) = submit_on(&a, NEW_SERVICE);
    assert_eq!(status, 201, "the previous set is still in force: {body}");
    let (code, out, _) = cli(&a, ADMIN_TOKEN, &["reload", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["error"].as_str().unwrap().contains("broken.toml"), "{v}");

    // Not an administrator: 403, exit 2, and nothing reloaded.
    let (code, _, err) = cli(&a, &a.token, &["reload"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an administrator"), "{err}");
    let (code, _, err) = cli(&a, &a.token, &["audit", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an administrator"), "{err}");

    // The trail: the load, the applied reload (with the new hash), the refused ones.
    let entries = trail(&a);
    let reloads: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "config.reload")
        .collect();
    let outcomes: Vec<(&str, &str)> = reloads
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("ops", "ok"),
            ("ops", "ok"),
            ("ops", "refused"),
            ("ops", "refused"),
            ("portal", "refused")
        ],
        "{entries:#?}"
    );
    let applied = reloads[0];
    let sha_after = applied["details"]["files"]["pmode"][&exchange_key]
        .as_str()
        .unwrap();
    assert_ne!(sha_after, sha_before);
    assert_eq!(
        sha_after,
        token_sha256(&std::fs::read_to_string(&exchange).unwrap())
    );
    assert_eq!(reloads[1]["details"]["needs_restart"], json!(["[sender]"]));
    assert!(reloads[2]["details"]["errors"][0]
        .as_str()
        .unwrap()
        .contains("broken.toml"));
    // The first use of each token since start-up.
    for client in ["ops", "portal"] {
        assert_eq!(
            entries
                .iter()
                .filter(|e| e["action"] == "token.use" && e["actor"] == client)
                .count(),
            1,
            "{client}: {entries:#?}"
        );
    }

    // Text, paging and --since.
    let (code, out, err) = cli(&a, ADMIN_TOKEN, &["audit", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("config.reload") && out.contains("refused"),
        "{out}"
    );
    assert!(out.contains("error: "), "the errors are shown: {out}");
    let (code, out, _) = cli(&a, ADMIN_TOKEN, &["audit", "list", "--limit", "2"]);
    assert_eq!(code, 0);
    let more = out
        .lines()
        .find_map(|l| l.strip_prefix("more: varti audit list --after "))
        .unwrap_or_else(|| panic!("a full page says how to go on: {out}"))
        .to_owned();
    let (code, out, _) = cli(
        &a,
        ADMIN_TOKEN,
        &["audit", "list", "--after", &more, "--json"],
    );
    assert_eq!(code, 0);
    let rest: Value = serde_json::from_str(&out).unwrap();
    let first_seq = rest["entries"][0]["seq"].as_u64().unwrap();
    assert!(first_seq > more.parse::<u64>().unwrap());
    assert_eq!(rest["entries"].as_array().unwrap().len(), entries.len() - 2);
    let since = applied["at"].as_str().unwrap();
    let (code, out, _) = cli(
        &a,
        ADMIN_TOKEN,
        &["audit", "list", "--since", since, "--json"],
    );
    assert_eq!(code, 0);
    let recent: Value = serde_json::from_str(&out).unwrap();
    let recent_seqs: Vec<u64> = recent["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let applied_seq = applied["seq"].as_u64().unwrap();
    let expected: Vec<u64> = entries
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .filter(|s| *s >= applied_seq)
        .collect();
    assert_eq!(recent_seqs, expected, "--since {since}");
    let (code, _, err) = cli(&a, ADMIN_TOKEN, &["audit", "list", "--since", "yesterday"]);
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn sighup_reloads_a_running_serve() {
    let (pair, mut a) = start_single();
    let exchange = pair.layout.root.join("pmodes/exchange.toml");
    std::fs::write(&exchange, exchange_pmodes() + &new_process()).unwrap();
    let hup = |node: &Node| {
        let pid = node.served.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    // Waits for the `n`-th reload entry in the trail.
    let reloads = |node: &Node, n: usize| -> Vec<Value> {
        let start = Instant::now();
        loop {
            let found: Vec<Value> = trail(node)
                .into_iter()
                .filter(|e| e["action"] == "config.reload")
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no reload {n} in the audit trail 30 s after SIGHUP; log:\n{}",
                node.served.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    hup(&a);
    let found = reloads(&a, 1);
    assert_eq!(found[0]["actor"], "local");
    assert_eq!(found[0]["outcome"], "ok", "{:#}", found[0]);
    assert_eq!(found[0]["details"]["generation"], 2);
    assert!(
        a.served.child.try_wait().unwrap().is_none(),
        "SIGHUP ended varti serve"
    );
    let (status, body) = submit_on(&a, NEW_SERVICE);
    assert_eq!(status, 201, "the new leg is served after SIGHUP: {body}");

    // A broken set on SIGHUP: logged and audited, the old set stays.
    std::fs::write(exchange.with_file_name("broken.toml"), "not = [toml").unwrap();
    hup(&a);
    let found = reloads(&a, 2);
    assert_eq!(found[1]["outcome"], "refused", "{:#}", found[1]);
    assert!(a.served.log_text().contains("reload refused"));
    let (status, body) = submit_on(&a, NEW_SERVICE);
    assert_eq!(status, 201, "{body}");
    let status = a.served.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

/// The acceptance test of issue 14: both pairs on PostgreSQL carry messages while the
/// changed PMode set is reloaded on one instance of a side, then the other (by the API and
/// by SIGHUP), on both sides. At the end: every message acknowledged and taken exactly
/// once (`chaos_support::check`), each side's shared trail shows its two reloads, and the
/// leg the new set adds carries a message from a to b.
#[test]
fn a_changed_pmode_set_is_reloaded_on_a_running_pair_under_load() {
    let n = message_count("VARTI_RELOAD_N", 300);
    let run = format!("r{}", std::process::id());
    let balancer = Arc::new(Balancer::bind(2));
    let pair = chaos_pair(balancer.port);
    let layout = &pair.layout;
    let (sa, sb) = (TestSchema::migrated(), TestSchema::migrated());
    let [config_a, config_b] = [&sa, &sb].map(|s| {
        format!(
            "{}{FAST_SENDER}{}",
            admin_client(),
            postgres_store_config(s.url(), s.name())
        )
    });
    layout.rewrite_config(&layout.a, &config_a).unwrap();
    layout.rewrite_config(&layout.b, &config_b).unwrap();
    let a2 = layout.add_instance(&layout.a, "a2", &config_a).unwrap();
    let b2 = layout.add_instance(&layout.b, "b2", &config_b).unwrap();
    let senders = vec![Instance::start(layout.a.clone()), Instance::start(a2)];
    let receivers = vec![Instance::start(layout.b.clone()), Instance::start(b2)];
    balancer.set_targets(receivers.iter().map(Instance::msh).collect());
    let apis: Vec<_> = senders
        .iter()
        .chain(&receivers)
        .map(|i| (i.name(), i.layout.backend(), i.layout.dir.clone()))
        .collect();

    // The changed set: chaos.toml gains the new process (the file all four read).
    let chaos_file = layout.root.join("pmodes/chaos.toml");
    let changed = chaos_pmodes() + &new_process();
    let mut step = 0;
    let mut under_load = Vec::new();
    let outcome = Scenario {
        run: run.clone(),
        n,
        senders,
        receivers,
        kill_senders: false,
        kill_receivers: false,
        balancer,
        within: Duration::from_secs(240),
    }
    .run(&mut |submitted, acknowledged| {
        if submitted == 0 {
            return false;
        }
        if step == 0 {
            std::fs::write(&chaos_file, &changed).unwrap();
        }
        // One instance, then the other of the same side, in the same progress tick: a by
        // the API then a2 by SIGHUP, at the next tick b by the API then b2 by SIGHUP. Two
        // ticks of a few seconds' run, so every reload meets messages in flight however
        // fast the machine is.
        for _ in 0..2 {
            let (name, backend, dir) = &apis[step];
            if step % 2 == 0 {
                let r = api_call(*backend, "POST", "/api/v1/admin/reload");
                assert_eq!(r.0, 200, "reload of {name}: {}", r.1);
                let v: Value = serde_json::from_str(&r.1).unwrap();
                assert_eq!(v["applied"], true, "{v:#}");
            } else {
                let ready: Value =
                    serde_json::from_str(&std::fs::read_to_string(dir.join("ready.json")).unwrap())
                        .unwrap();
                let pid = ready["pid"].as_u64().unwrap().to_string();
                assert!(Command::new("kill")
                    .args(["-HUP", &pid])
                    .status()
                    .unwrap()
                    .success());
            }
            eprintln!("reload: {name} at {submitted} submitted, {acknowledged} acknowledged");
            under_load.push(acknowledged);
            step += 1;
        }
        step == apis.len()
    });
    assert!(
        under_load.iter().all(|&acked| acked < n),
        "every reload happened while messages were still flowing: acknowledged then \
         {under_load:?} of {n} (raise VARTI_RELOAD_N on a fast machine)"
    );

    // Each side's trail (shared by its two instances) shows both reloads, applied, by two
    // different instances: the API's by `ops`, SIGHUP's by `local`.
    for (side, first) in [("a", 0), ("b", 2)] {
        let backend = apis[first].1;
        let start = Instant::now();
        let reloads = loop {
            let r = api_call(backend, "GET", "/api/v1/audit?limit=1000");
            assert_eq!(r.0, 200, "{}", r.1);
            let v: Value = serde_json::from_str(&r.1).unwrap();
            let reloads: Vec<Value> = v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"] == "config.reload")
                .cloned()
                .collect();
            if reloads.len() >= 2 {
                break reloads;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "side {side}: the trail shows {} reload(s): {v:#}",
                reloads.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(reloads.len(), 2, "side {side}: {reloads:#?}");
        assert!(reloads.iter().all(|e| e["outcome"] == "ok"), "{reloads:#?}");
        assert_eq!(reloads[0]["actor"], "ops");
        assert_eq!(reloads[1]["actor"], "local");
        assert_ne!(reloads[0]["instance"], reloads[1]["instance"]);
        for e in &reloads {
            let changes = e["details"]["changes"].to_string();
            assert!(changes.contains("chaos.toml"), "{e:#}");
        }
    }

    // The new set is in force on both sides: the new leg carries a message a → b.
    let sending = Side::of(&outcome.senders.iter().collect::<Vec<_>>());
    let (status, body) = {
        let boundary = "varti-reload-boundary";
        let meta = json!({
            "to_party": "varti-b", "service": NEW_SERVICE, "action": "Deliver",
            "message_id": format!("reloaded-{run}@varti-a.test"),
            "payloads": [{"part": "body", "mime_type": "text/plain"}],
        });
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"body\"; filename=\"b.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nafter the reload\r\n--{boundary}--\r\n"
        );
        let r = sending
            .call(
                1,
                "POST",
                "/api/v1/messages",
                Some(&format!("multipart/form-data; boundary={boundary}")),
                body.as_bytes(),
            )
            .unwrap();
        (r.status, r.body)
    };
    assert_eq!(status, 201, "{body}");
    let id = format!("reloaded-{run}@varti-a.test");
    let start = Instant::now();
    loop {
        let v = sending.get_json(
            0,
            &format!("/api/v1/messages/{}", urlencode(&id)),
            Duration::from_secs(30),
        );
        if v["state"] == "acknowledged" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the message on the new leg is {} : {v:#}",
            v["state"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut instance in outcome.senders.into_iter().chain(outcome.receivers) {
        instance.terminate();
    }
    drop((sa, sb));
}

/// One admin API call to `backend`: (status, body).
fn api_call(backend: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(backend).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let headers = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    let r = serve_support::http_request(&mut tcp, method, path, &headers, b"").unwrap();
    (r.status, r.body)
}

#[test]
fn help_teaches_reload_and_audit() {
    let (code, out, _) = common::varti(&["reload", "--help"]);
    assert_eq!(code, 0);
    for needle in ["needs restart", "SIGHUP", "Exit status", "varti audit list"] {
        assert!(out.contains(needle), "reload --help lacks {needle}: {out}");
    }
    let (code, out, _) = common::varti(&["audit", "list", "--help"]);
    assert_eq!(code, 0);
    for needle in ["--since", "--after", "--json", "Examples", "admin token"] {
        assert!(
            out.contains(needle),
            "audit list --help lacks {needle}: {out}"
        );
    }
    // No API running there: exit 2 with a hint, not a panic.
    let port = pair_support::free_port();
    let (code, _, err) = common::varti(&[
        "reload",
        "--api",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        "x",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is `varti serve` running?"), "{err}");
}

/// The acts on messages are in the trail: a purge by an admin (and one refused to a
/// backend), a resend of a failed message, an admin's acknowledgement for a backend (a
/// backend acknowledging its own message is not an administrative act).
#[test]
fn purge_resend_and_admin_ack_are_audited() {
    let pair = Pair::create(
        ("exchange.toml", exchange_pmodes()),
        None,
        &(admin_client() + SENDER),
    );
    let a = pair.start("a");
    // b is not up: the message fails after its retries (1 s, 2 s, 2 s).
    let (status, body) = submit_on(&a, "urn:varti:test:exchange");
    assert_eq!(status, 201, "{body}");
    let failed_id = serde_json::from_str::<Value>(&body).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.wait_state(&failed_id, "failed", Duration::from_secs(40));
    let b = pair.start("b");
    let path = format!(
        "/api/v1/messages/{}/resend",
        pair_support::urlencode(&failed_id)
    );
    let r = a.api("POST", &path, None, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait_state(&failed_id, "acknowledged", Duration::from_secs(30));

    // b: one message acknowledged by an admin, one by its own backend.
    let (status, body) = submit_on(&a, "urn:varti:test:exchange");
    assert_eq!(status, 201, "{body}");
    let own_id = serde_json::from_str::<Value>(&body).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.wait_state(&own_id, "acknowledged", Duration::from_secs(30));
    for (id, token) in [(&failed_id, ADMIN_TOKEN), (&own_id, b.token.as_str())] {
        let path = format!("/api/v1/messages/{}/ack", pair_support::urlencode(id));
        let r = b.api_as(token, "POST", &path, None, b"");
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // Purges on a: the admin's, and a backend's refused.
    let r = a.api_as(ADMIN_TOKEN, "POST", "/api/v1/admin/purge", None, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = a.api("POST", "/api/v1/admin/purge", None, b"");
    assert_eq!(r.status, 403, "{}", r.body);

    let acts = |node: &Node| -> Vec<(String, String, String, String)> {
        trail(node)
            .iter()
            .filter(|e| e["action"].as_str().unwrap().starts_with("message"))
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_owned();
                (s("actor"), s("action"), s("subject"), s("outcome"))
            })
            .collect()
    };
    let t = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
    assert_eq!(
        acts(&a),
        [
            t("portal", "message.resend", &failed_id, "ok"),
            t("ops", "messages.purge", "", "ok"),
            t("portal", "messages.purge", "", "refused"),
        ]
    );
    assert_eq!(acts(&b), [t("ops", "message.ack", &failed_id, "ok")]);
}
