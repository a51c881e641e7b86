//! Database failover under load: a PostgreSQL primary and a synchronous streaming standby,
//! started by the test from the installed binaries (as the `postgres` user), carry a
//! sending pair (two varti-a) and a receiving pair (two varti-b) whose `store.url` lists
//! both servers with `target_session_attrs=read-write`. While messages flow, the primary is
//! stopped hard (`pg_ctl stop -m immediate`) and the standby promoted: the pairs carry on,
//! nothing acknowledged before the failover is lost, and every message is acknowledged and
//! taken by the receiving backend exactly once.
//!
//! The PostgreSQL binaries come from `VARTI_PG_BIN` (default `/usr/lib/postgresql/15/bin`);
//! the test fails, it never skips, when they or the `postgres` user are missing.

mod chaos_support;
mod pair_support;
mod serve_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::*;
use varti::pair::free_port;
use varti_store::postgres::{migrate_with, PgOptions};

/// Where `initdb`, `pg_ctl` and `pg_basebackup` are.
fn pg_bin() -> PathBuf {
    let dir = std::env::var("VARTI_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let dir = PathBuf::from(dir);
    for tool in ["initdb", "pg_ctl", "pg_basebackup"] {
        assert!(
            dir.join(tool).is_file(),
            "\n\nthe failover test starts its own PostgreSQL servers and needs {}: install the \
             PostgreSQL server package (e.g. postgresql-15) or point VARTI_PG_BIN at the \
             directory holding initdb, pg_ctl and pg_basebackup\n",
            dir.join(tool).display()
        );
    }
    dir
}

/// Runs a PostgreSQL tool as the `postgres` user (the server refuses to run as root).
fn as_postgres(tool: &Path, args: &[&str]) -> Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run runuser (util-linux) for {}: {e}",
                tool.display()
            )
        });
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}{}",
        tool.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A primary and a synchronous standby in a temporary directory owned by `postgres`.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    primary_port: u16,
    standby_port: u16,
    primary_up: bool,
}

impl Cluster {
    fn start() -> Cluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("varti-failover-")
            .tempdir()
            .unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            chown.success(),
            "cannot give {} to the postgres user (the test runs as root and needs the \
             `postgres` system user of the PostgreSQL package)",
            dir.path().display()
        );
        let (primary_port, standby_port) = (free_port().unwrap(), free_port().unwrap());
        let mut cluster = Cluster {
            bin,
            dir,
            primary_port,
            standby_port,
            primary_up: false,
        };
        let primary = cluster.data("primary");
        as_postgres(
            &cluster.bin.join("initdb"),
            &["-D", &primary, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        // Synchronous replication: a COMMIT returns once the standby has the WAL, so a
        // message acknowledged to a partner survives the loss of the primary.
        cluster.append_conf(
            "primary/postgresql.conf",
            &format!(
                "port = {primary_port}\nlisten_addresses = '127.0.0.1'\n\
                 unix_socket_directories = '{sock}'\nwal_level = replica\n\
                 max_wal_senders = 5\nhot_standby = on\n\
                 synchronous_standby_names = 'FIRST 1 (standby1)'\n\
                 synchronous_commit = on\nmax_connections = 100\nshared_buffers = 32MB\n",
                sock = cluster.dir.path().display()
            ),
        );
        cluster.pg_ctl(&[
            "-D",
            &primary,
            "-l",
            &cluster.data("primary.log"),
            "-w",
            "start",
        ]);
        cluster.primary_up = true;
        let standby = cluster.data("standby");
        as_postgres(
            &cluster.bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &standby,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
        );
        // The copy of the primary's settings would make the promoted standby wait for a
        // synchronous standby of its own, which it does not have until the old primary is
        // rebuilt: it runs alone after the failover (the documented trade-off).
        cluster.append_conf(
            "standby/postgresql.auto.conf",
            &format!(
                "port = {standby_port}\nprimary_conninfo = 'host=127.0.0.1 \
                 port={primary_port} user=postgres application_name=standby1'\n\
                 synchronous_standby_names = ''\n"
            ),
        );
        cluster.pg_ctl(&[
            "-D",
            &standby,
            "-l",
            &cluster.data("standby.log"),
            "-w",
            "start",
        ]);
        cluster.wait_for_sync_standby();
        cluster
    }

    fn data(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn append_conf(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(file))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn pg_ctl(&self, args: &[&str]) {
        as_postgres(&self.bin.join("pg_ctl"), args);
    }

    fn primary_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.primary_port
        )
    }

    /// Both servers, the one accepting writes wins (what an operator configures).
    fn failover_url(&self) -> String {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres \
             target_session_attrs=read-write connect_timeout=2",
            self.primary_port, self.standby_port
        )
    }

    fn wait_for_sync_standby(&self) {
        let mut client = postgres::Client::connect(&self.primary_url(), postgres::NoTls).unwrap();
        let start = Instant::now();
        loop {
            let rows = client
                .query(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
                    &[],
                )
                .unwrap();
            if rows.first().map(|r| r.get::<_, String>(0)).as_deref() == Some("sync") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the standby did not become the synchronous standby within 60 s:\n{}",
                std::fs::read_to_string(self.data("standby.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A schema with Varti's tables, made on the primary (and replicated).
    fn migrated_schema(&self, name: &str) {
        migrate_with(
            &self.primary_url(),
            &PgOptions {
                schema: Some(name.to_owned()),
                ..PgOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("migrating schema {name}: {e}"));
    }

    /// The primary is lost: stopped without a shutdown checkpoint, connections cut.
    fn kill_primary(&mut self) {
        self.pg_ctl(&["-D", &self.data("primary"), "-m", "immediate", "stop"]);
        self.primary_up = false;
    }

    /// The standby becomes the primary.
    fn promote_standby(&self) {
        self.pg_ctl(&["-D", &self.data("standby"), "-w", "promote"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (name, up) in [("primary", self.primary_up), ("standby", true)] {
            if up {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"))
                    .args(["-D", &self.data(name), "-m", "immediate", "stop"])
                    .output();
            }
        }
    }
}

#[test]
fn pairs_carry_on_when_the_primary_is_lost_and_the_standby_promoted() {
    let n = message_count("VARTI_FAILOVER_N", 600);
    let mut cluster = Cluster::start();
    cluster.migrated_schema("varti_a");
    cluster.migrated_schema("varti_b");
    let url = cluster.failover_url();

    let run = format!("f{}", std::process::id());
    let balancer = Arc::new(Balancer::bind(2));
    let pair = chaos_pair(balancer.port);
    let stores = ["varti_a", "varti_b"].map(|schema| postgres_store_config(&url, schema));
    let (senders, receivers) = start_pairs(&pair.layout, [&stores[0], &stores[1]]);
    balancer.set_targets(receivers.iter().map(Instance::msh).collect());
    let sending = Side::of(&senders.iter().collect::<Vec<_>>());

    // Once a third of the messages are acknowledged: note which, lose the primary, promote.
    let mut acknowledged_before: HashSet<String> = HashSet::new();
    let mut failover_at = None;
    let mut interlude = |_submitted: usize, acknowledged: usize| -> bool {
        if acknowledged < n / 3 {
            return false;
        }
        acknowledged_before = sending
            .all("outbound")
            .iter()
            .filter(|m| m["state"] == "acknowledged")
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect();
        eprintln!(
            "failover: {} acknowledged; stopping the primary (immediate) and promoting the standby",
            acknowledged_before.len()
        );
        cluster.kill_primary();
        cluster.promote_standby();
        failover_at = Some(Instant::now());
        true
    };
    let outcome = Scenario {
        run: run.clone(),
        n,
        senders,
        receivers,
        kill_senders: false,
        kill_receivers: false,
        balancer,
        within: Duration::from_secs(300),
    }
    .run(&mut interlude);
    let failover_at = failover_at.expect("the failover happened during the run");
    assert!(
        !acknowledged_before.is_empty() && acknowledged_before.len() < n,
        "the failover must fall in the middle of the flow ({} of {n} acknowledged before it)",
        acknowledged_before.len()
    );
    eprintln!(
        "failover: the run settled {:.1}s after the failover",
        failover_at.elapsed().as_secs_f64()
    );

    // Nothing acknowledged before the failover was lost: each is still acknowledged (the
    // full check above also found every message acknowledged and taken exactly once).
    let after: HashSet<String> = sending
        .all("outbound")
        .iter()
        .filter(|m| m["state"] == "acknowledged")
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged_before.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the failover, gone after: {lost:?}"
    );

    // The old primary is gone: the stores now live on the promoted standby alone.
    let mut promoted = postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster.standby_port
        ),
        postgres::NoTls,
    )
    .unwrap();
    let in_recovery: bool = promoted
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_recovery, "the standby was promoted");
    let count: i64 = promoted
        .query_one("SELECT count(*) FROM varti_b.messages", &[])
        .unwrap()
        .get(0);
    assert_eq!(count as usize, n, "inbound messages on the promoted server");

    for mut instance in outcome.senders.into_iter().chain(outcome.receivers) {
        instance.terminate();
    }
    drop(cluster);
}
