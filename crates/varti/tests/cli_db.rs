//! `varti db migrate` against the real PostgreSQL on this machine.
//!
//! Each test creates its own database and drops it afterwards. When the server cannot be
//! reached the test fails with instructions: it never skips.

mod common;
mod serve_support;

use common::varti;
use std::time::Duration;

const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

struct TempDb {
    name: String,
}

impl TempDb {
    fn create() -> TempDb {
        TempDb::create_named("cli")
    }
    fn create_named(tag: &str) -> TempDb {
        let name = format!("varti_{tag}_{}", std::process::id());
        let mut c = postgres_client();
        // One statement per call: CREATE/DROP DATABASE refuse to share a transaction.
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        c.simple_query(&drop)
            .expect("drop a leftover test database");
        let create = format!("CREATE DATABASE {name}");
        c.simple_query(&create).expect("create the test database");
        TempDb { name }
    }
    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(ADMIN, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn postgres_client() -> postgres::Client {
    postgres::Client::connect(ADMIN, postgres::NoTls).unwrap_or_else(|e| {
        panic!("PostgreSQL at 127.0.0.1:5432 (user postgres, database test) is needed: {e}")
    })
}

#[test]
fn migrate_applies_once_then_is_a_no_op() {
    let db = TempDb::create();
    let (code, out, err) = varti(&["db", "migrate", "--database", &db.url(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let applied = v["applied"].as_array().unwrap();
    assert!(!applied.is_empty(), "a fresh database gets migrations: {v}");
    assert_eq!(applied.last().unwrap(), &v["schema_version"]);

    // The tables exist now.
    let mut c = postgres::Client::connect(&db.url(), postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'messages'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(c);

    let (code, out, _) = varti(&["db", "migrate", "--database", &db.url()]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to apply"), "{out}");
}

#[test]
fn migrate_against_an_unreachable_server_exits_2_with_a_hint() {
    let (code, _, err) = varti(&[
        "db",
        "migrate",
        "--database",
        "host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=2",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot migrate") && err.contains("hint"),
        "{err}"
    );
}

/// `varti serve` on the PostgreSQL store: refuses an unmigrated database with the fix,
/// then runs (ready) once `varti db migrate` was applied.
#[test]
fn serve_on_postgres_requires_the_current_schema() {
    let db = TempDb::create_named("serve");
    let dir = tempfile::tempdir().unwrap();
    let config = serve_support::plain_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nkind = \"postgres\"\nurl = \"{}\"\n",
        db.url()
    ));
    std::fs::write(dir.path().join("varti.toml"), &config).unwrap();
    let (code, _, err) = common::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_varti"))
            .current_dir(dir.path())
            .args(["serve", "--config", "varti.toml", "--insecure-http"]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("varti db migrate"), "no fix named: {err}");

    let (code, _, err) = varti(&["db", "migrate", "--database", &db.url()]);
    assert_eq!(code, 0, "{err}");
    let mut served = serve_support::spawn_serve(dir.path(), &config, &["--insecure-http"]);
    let ready = serve_support::plain_get(served.ops, "/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(
        served.log_text().contains("store=postgresql"),
        "{}",
        served.log_text()
    );
    assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
}
