//! `varti db migrate` against the real PostgreSQL on this machine.
//!
//! Each test creates its own database and drops it afterwards. When the server cannot be
//! reached the test fails with instructions: it never skips.

use std::process::Command;

const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

struct TempDb {
    name: String,
}

impl TempDb {
    fn create() -> TempDb {
        let name = format!("varti_cli_{}", std::process::id());
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

fn varti(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
