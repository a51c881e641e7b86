//! A PostgreSQL primary and a synchronous streaming standby, started by the test from the
//! installed binaries (as the `postgres` user): the failover test and the two-data-centre
//! tests. The binaries come from `VARTI_PG_BIN` (default `/usr/lib/postgresql/15/bin`); a
//! test fails, it never skips, when they or the `postgres` user are missing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The primary's port (127.0.0.1).
    pub primary_port: u16,
    /// The standby's port (127.0.0.1).
    pub standby_port: u16,
    primary_up: bool,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with_replication_via(|primary| primary)
    }

    /// [`Cluster::start`], the standby streaming from the primary at the address `via`
    /// gives for the primary's (a DC link proxy: replication crosses the link).
    pub fn start_with_replication_via(via: impl FnOnce(SocketAddr) -> SocketAddr) -> Cluster {
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
        let upstream = via(SocketAddr::from(([127, 0, 0, 1], primary_port)));
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
                "port = {standby_port}\nprimary_conninfo = 'host={} \
                 port={} user=postgres application_name=standby1'\n\
                 synchronous_standby_names = ''\n",
                upstream.ip(),
                upstream.port()
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

    pub fn data(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn append_conf(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(file))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        as_postgres(&self.bin.join("pg_ctl"), args);
    }

    pub fn primary_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.primary_port
        )
    }

    /// Both servers, the one accepting writes wins (what an operator configures).
    pub fn failover_url(&self) -> String {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres \
             target_session_attrs=read-write connect_timeout=2",
            self.primary_port, self.standby_port
        )
    }

    pub fn wait_for_sync_standby(&self) {
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
    pub fn migrated_schema(&self, name: &str) {
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
    pub fn kill_primary(&mut self) {
        self.pg_ctl(&["-D", &self.data("primary"), "-m", "immediate", "stop"]);
        self.primary_up = false;
    }

    /// The standby becomes the primary.
    pub fn promote_standby(&self) {
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
