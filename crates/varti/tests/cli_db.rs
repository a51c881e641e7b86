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

// ---- The embedded store: check, recover, backup, restore, and serve's start-up check ----

mod embedded {
    use super::common::{run, varti};
    use super::serve_support;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};
    use time::OffsetDateTime;
    use varti_store::{MessageMeta, NewInbound, PayloadEntry, SledStore, State, Store};

    /// A store at `dir` with `n` inbound messages, the first one delivered.
    fn populate(dir: &Path, n: usize) {
        let store = SledStore::open(dir).unwrap();
        for i in 0..n {
            let id = format!("cli-{i}@varti.test");
            // Past the inline bound: a payload file, which the damage tests below flip.
            let stored = store
                .payloads()
                .put(&mut format!("<payload {i}/>").repeat(8000).as_bytes())
                .unwrap();
            assert!(!stored.is_inline());
            let meta = MessageMeta {
                message_id: id.clone(),
                owner: "backend".into(),
                from_party: "red".into(),
                to_party: "blue".into(),
                service: "urn:example:service".into(),
                action: "Deliver".into(),
                conversation_id: id.clone(),
                ref_to_message_id: None,
                pmode_id: "p".into(),
                payloads: vec![PayloadEntry {
                    content_id: "cid:p@varti.test".into(),
                    mime_type: "application/xml".into(),
                    stored,
                    properties: Vec::new(),
                }],
                properties: Vec::new(),
            };
            let receipt = format!("<receipt {i}/>").into_bytes();
            store
                .insert_inbound(
                    NewInbound {
                        meta,
                        receipt,
                        peer: None,
                    },
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
        }
        assert!(store
            .mark_delivered("cli-0@varti.test", OffsetDateTime::now_utc())
            .unwrap());
    }

    fn payload_file(dir: &Path, id: &str) -> std::path::PathBuf {
        let store = SledStore::open(dir).unwrap();
        let record = store.get(id).unwrap().unwrap();
        store
            .file_payloads()
            .path_of(&record.meta.payloads[0].stored)
            .unwrap()
    }

    fn path(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    #[test]
    fn db_check_passes_a_clean_store_and_exits_1_naming_a_damaged_payload() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        populate(&store, 3);
        let (code, out, err) = varti(&["db", "check", "--data-dir", path(&store)]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("3 message(s)") && out.contains("no damage"),
            "{out}"
        );

        let file = payload_file(&store, "cli-2@varti.test");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&file, bytes).unwrap();
        let (code, out, _) = varti(&["db", "check", "--data-dir", path(&store)]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("damage:") && out.contains("cli-2@varti.test"),
            "{out}"
        );
        assert!(out.contains("varti db recover --data-dir"), "{out}");

        let (code, out, _) = varti(&["db", "check", "--data-dir", path(&store), "--json"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["damaged"], true);
        assert_eq!(v["findings"][0]["kind"], "payload_mismatch");
        assert_eq!(v["findings"][0]["message_id"], "cli-2@varti.test");

        // No store there: could not run (2), with a hint.
        let (code, _, err) = varti(&["db", "check", "--data-dir", path(&dir.path().join("none"))]);
        assert_eq!(code, 2);
        assert!(err.contains("hint:"), "{err}");
    }

    #[test]
    fn db_recover_rebuilds_a_store_whose_sled_files_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        populate(&store, 4);
        std::fs::remove_dir_all(store.join("db")).unwrap();
        let (code, out, _) = varti(&["db", "check", "--data-dir", path(&store)]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("missing"), "{out}");

        let out_dir = dir.path().join("recovered");
        let (code, out, err) = varti(&[
            "db",
            "recover",
            "--data-dir",
            path(&store),
            "--out",
            path(&out_dir),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("saved: 4 message(s) (0 from the database, 4 from sidecars)"),
            "{out}"
        );
        let (code, out, _) = varti(&["db", "check", "--data-dir", path(&out_dir)]);
        assert_eq!(code, 0, "{out}");
        let recovered = SledStore::open(&out_dir).unwrap();
        let first = recovered.get("cli-0@varti.test").unwrap().unwrap();
        assert_eq!(first.state, State::Delivered);
        drop(recovered);

        // Again into the same place: refused, nothing changed.
        let (code, _, err) = varti(&[
            "db",
            "recover",
            "--data-dir",
            path(&store),
            "--out",
            path(&out_dir),
            "--json",
        ]);
        assert_eq!(code, 2, "{err}");
    }

    #[test]
    fn db_backup_and_restore_round_trip_and_a_truncated_backup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        populate(&store, 5);
        let file = dir.path().join("store.vbak");
        let (code, out, err) = varti(&[
            "db",
            "backup",
            "--data-dir",
            path(&store),
            "--out",
            path(&file),
            "--json",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["messages"].as_u64(), v["payloads"].as_u64()),
            (Some(5), Some(5))
        );

        let restored = dir.path().join("restored");
        let (code, out, err) =
            varti(&["db", "restore", path(&file), "--data-dir", path(&restored)]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("restored 5 message(s), 5 payload(s)"), "{out}");
        let (code, out, _) = varti(&["db", "check", "--data-dir", path(&restored)]);
        assert_eq!(code, 0, "{out}");

        // A restore never overwrites a store.
        let (code, _, err) = varti(&["db", "restore", path(&file), "--data-dir", path(&restored)]);
        assert_eq!(code, 2);
        assert!(err.contains("not empty"), "{err}");

        // A truncated backup: refused, nothing left behind.
        let bytes = std::fs::read(&file).unwrap();
        let cut = dir.path().join("cut.vbak");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let target = dir.path().join("from-cut");
        let (code, _, err) = varti(&["db", "restore", path(&cut), "--data-dir", path(&target)]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("truncated") || err.contains("damaged"),
            "{err}"
        );
        assert!(!target.exists());

        // Streamed through a pipe: backup to stdout, restore from stdin.
        let piped = dir.path().join("piped");
        let mut backup = Command::new(env!("CARGO_BIN_EXE_varti"))
            .args(["db", "backup", "--data-dir", path(&store), "--out", "-"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (code, out, err) = run(Command::new(env!("CARGO_BIN_EXE_varti"))
            .args(["db", "restore", "-", "--data-dir", path(&piped)])
            .stdin(backup.stdout.take().unwrap()));
        assert!(backup.wait().unwrap().success());
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("restored 5 message(s)"), "{out}");
    }

    /// serve refuses a damaged store with the fix; the recovered store serves; a scheduled
    /// backup of the running store restores.
    #[test]
    fn serve_refuses_a_damaged_store_then_serves_the_recovered_one_and_backs_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data").join("store");
        populate(&store, 3);
        std::fs::remove_file(payload_file(&store, "cli-1@varti.test")).unwrap();
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n";
        std::fs::write(
            dir.path().join("varti.toml"),
            serve_support::plain_config(base),
        )
        .unwrap();
        let (code, _, err) = run(Command::new(env!("CARGO_BIN_EXE_varti"))
            .current_dir(dir.path())
            .args(["serve", "--config", "varti.toml", "--insecure-http"]));
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("is damaged") && err.contains("cli-1@varti.test"),
            "{err}"
        );
        assert!(
            err.contains("varti db recover --data-dir"),
            "no fix named: {err}"
        );

        let recovered = dir.path().join("recovered");
        let (code, out, err) = varti(&[
            "db",
            "recover",
            "--data-dir",
            path(&store),
            "--out",
            path(&recovered),
        ]);
        // One payload was lost: recovered with losses (1), and it says which.
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("lost payload: cli-1@varti.test"), "{out}");

        let backups = dir.path().join("backups");
        let config = serve_support::plain_config(&format!(
            "{base}[store]\npath = \"{}\"\nbackup_dir = \"{}\"\nbackup_every_secs = 1\nbackup_keep = 2\n",
            recovered.display(),
            backups.display()
        ));
        let mut served = serve_support::spawn_serve(dir.path(), &config, &["--insecure-http"]);
        let ready = serve_support::plain_get(served.ops, "/ready");
        assert_eq!(ready.status, 200, "{}", ready.body);
        // Wait for a complete scheduled backup (renamed into place when whole).
        let deadline = Instant::now() + Duration::from_secs(20);
        let backup = loop {
            let found = std::fs::read_dir(&backups).ok().and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "vbak"))
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                Instant::now() < deadline,
                "no scheduled backup: {}",
                served.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let restored = dir.path().join("restored");
        let (code, out, err) = varti(&[
            "db",
            "restore",
            path(&backup),
            "--data-dir",
            path(&restored),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("restored 3 message(s)"), "{out}");
        assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
        assert!(
            served.log_text().contains("store check passed"),
            "{}",
            served.log_text()
        );
    }

    /// A process killed while receiving leaves its temporary files in the spool; the next
    /// `varti serve` on that data directory removes them before it serves.
    #[test]
    fn serve_removes_the_files_a_killed_run_left_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("data/spool");
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::write(spool.join("varti-spool-Xk2f9a"), vec![0u8; 64 * 1024]).unwrap();
        std::fs::write(spool.join(".tmpQ81zzp"), b"part of an upload").unwrap();
        // Sealed copies an earlier version kept for its retries go with their directory:
        // every attempt now seals its message anew.
        let sealed = spool.join("sealed");
        std::fs::create_dir_all(&sealed).unwrap();
        std::fs::write(sealed.join("ab12.mime"), b"kept").unwrap();
        std::fs::write(sealed.join("ab12.json"), b"{}").unwrap();
        std::fs::write(sealed.join("varti-spool-7Hq2"), b"half sealed").unwrap();
        let config = serve_support::plain_config(
            "[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n",
        );
        let mut served = serve_support::spawn_serve(dir.path(), &config, &["--insecure-http"]);
        let left: Vec<String> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [".varti-spool.lock"], "{}", served.log_text());
        assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
        let log = served.log_text();
        assert!(
            log.contains("removed the temporary files an earlier run left")
                && log.contains("files=5"),
            "{log}"
        );
    }
}
