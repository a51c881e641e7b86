//! `varti db …`: the PostgreSQL store's schema; the embedded store's check, recovery,
//! backup and restore.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use time::OffsetDateTime;
use varti_store::{CheckOptions, Severity, SledStore};

use super::{exit_cannot_run, exit_problems};
use varti::config::{Config, StoreKind};

/// The `db` command group.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the PostgreSQL store's schema migrations that the database lacks.
    ///
    /// Migrations are versioned and applied in order, in one transaction, under an
    /// advisory lock, so running this from both instances of a pair at once is safe.
    /// Running it again on a current schema changes nothing. `varti serve` refuses to
    /// start on a schema older (or newer) than the binary.
    ///
    /// Example: varti db migrate --database "host=db1,db2 user=varti dbname=varti target_session_attrs=read-write"
    Migrate(MigrateArgs),
    /// Check the embedded store: the same integrity check `varti serve` runs at start-up.
    ///
    /// sled must open (no interrupted snapshot left); every record must read and obey the
    /// state machine, with its index entries; every payload must be present with its
    /// recorded size and SHA-256 (every payload file is read); no message sidecar may hold a
    /// message or a state the database lost; payload files no message names, older than 15
    /// minutes, are reported as warnings. Run it with Varti stopped (sled allows one process).
    ///
    /// Exit status: 0 no damage (warnings allowed), 1 damage found (the fix is printed),
    /// 2 the check could not run (no store there, or it is in use).
    ///
    /// Example: varti db check --data-dir /var/lib/varti/store
    Check(CheckArgs),
    /// Rebuild a clean embedded store from a damaged one, into a new directory.
    ///
    /// The damaged store is never changed: its sled files are copied and the copy is read;
    /// each message comes from the database or, where the database lost it (or a change of
    /// it), from its sidecar (the last acknowledged state, written beside the payloads).
    /// Payloads are copied only when their size and SHA-256 match; a message whose payload
    /// is lost keeps its record (receipt, history) with its payloads marked purged. The
    /// report says what was saved and what was lost. Then point store.path at NEWDIR (or
    /// move it into place) and start Varti.
    ///
    /// Exit status: 0 everything saved, 1 recovered with losses (listed), 2 could not run.
    ///
    /// Example: varti db recover --data-dir /var/lib/varti/store --out /var/lib/varti/store.recovered
    Recover(RecoverArgs),
    /// Write a backup of the embedded store to one file (streamed; `-` for stdout).
    ///
    /// Each message is written consistently with its payloads; messages stored while the
    /// backup runs may or may not be in it. The file ends with its own SHA-256, so a
    /// truncated or damaged backup is refused by `varti db restore`. sled allows one process
    /// at a time: run it with Varti stopped, or use the backup a running `varti serve`
    /// writes on its schedule (store.backup_dir, store.backup_every).
    ///
    /// Example: varti db backup --data-dir /var/lib/varti/store --out /backups/varti-$(date +%F).vbak
    Backup(BackupArgs),
    /// Restore a backup into a new embedded store directory (`-` reads stdin).
    ///
    /// Everything is checked while reading (each payload's size and SHA-256, the whole
    /// file's SHA-256); on any error nothing is left at DIR. DIR must not hold a store.
    ///
    /// Example: varti db restore /backups/varti-2026-12-05.vbak --data-dir /var/lib/varti/store
    Restore(RestoreArgs),
}

/// Where the embedded store is: `--data-dir`, or `store.path` of the configuration file.
#[derive(Debug, Args)]
pub struct StoreDirArgs {
    /// The embedded store's directory (store.path; by default <data_dir>/store, i.e.
    /// ./var/store). Without it, the one named by --config.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The configuration file to take store.path from when --data-dir is not given.
    #[arg(long, value_name = "FILE", default_value = "varti.toml")]
    pub config: PathBuf,
}

impl StoreDirArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        if !self.config.exists() {
            anyhow::bail!(
                "no --data-dir given and no configuration file {} to find the store in; name \
                 the store directory with --data-dir DIR",
                self.config.display()
            );
        }
        let config = Config::load(&self.config)?;
        if config.store.kind != StoreKind::Sled {
            anyhow::bail!(
                "{} uses the PostgreSQL store: back it up with pg_basebackup and WAL archiving \
                 (see deploy/pair/README.md); these commands are for the embedded store",
                self.config.display()
            );
        }
        Ok(config.store_path())
    }
}

/// Arguments of `db check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreDirArgs,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `db recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The damaged store's directory (only read).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The new directory to build the recovered store in (must not exist, or be empty).
    #[arg(long, value_name = "NEWDIR")]
    pub out: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `db backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreDirArgs,
    /// The backup file to write (`-`: stdout). Written under FILE.partial and renamed
    /// when complete, so FILE is always a whole backup.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print the summary as JSON (on stderr when the backup goes to stdout).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `db restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (`-`: stdin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The new store directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `db migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL connection string (key=value or postgresql:// URL; several hosts
    /// allowed, with target_session_attrs=read-write to reach the primary).
    #[arg(long, env = "VARTI_DATABASE_URL")]
    pub database: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `db` command.
pub fn run(cmd: DbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCommand::Migrate(args) => migrate(args),
        DbCommand::Check(args) => check(args),
        DbCommand::Recover(args) => recover(args),
        DbCommand::Backup(args) => backup(args),
        DbCommand::Restore(args) => restore(args),
    }
}

/// Prints an error the command could not get past, as text or JSON; exit 2.
fn cannot_run(json: bool, what: &str, e: &dyn std::fmt::Display, hint: &str) -> ExitCode {
    if json {
        println!("{}", json!({ "error": format!("{what}: {e}") }));
    } else {
        eprintln!("error: {what}: {e}\n  hint: {hint}");
    }
    exit_cannot_run()
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let dir = args.store.resolve()?;
    let report = match varti_store::check_store(&dir, CheckOptions::new(OffsetDateTime::now_utc()))
    {
        Ok(report) => report,
        Err(e) => {
            return Ok(cannot_run(
                args.json,
                "cannot check the store",
                &e,
                "name the store directory with --data-dir (the one holding db/ and payloads/) \
                 and stop the varti serve that uses it",
            ))
        }
    };
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["damaged"] = json!(report.is_damaged());
        if report.is_damaged() {
            v["fix"] = json!(report.fix_command());
        }
        println!("{v}");
    } else {
        for f in &report.findings {
            let label = match f.severity {
                Severity::Damage => "damage",
                Severity::Warning => "warning",
            };
            println!("{label}: {}", f.detail);
        }
        println!(
            "{}: {} message(s), {} payload file(s) checked, {} sidecar(s): {}",
            dir.display(),
            report.records,
            report.payloads_checked,
            report.sidecars,
            if report.is_damaged() {
                "DAMAGED"
            } else {
                "no damage"
            }
        );
        if report.is_damaged() {
            println!(
                "fix: stop Varti and run `{}`; it never changes this store. Then point \
                 store.path at the recovered directory.",
                report.fix_command()
            );
        }
    }
    Ok(if report.is_damaged() {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

fn recover(args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let report =
        match varti_store::recover_store(&args.data_dir, &args.out, OffsetDateTime::now_utc()) {
            Ok(report) => report,
            Err(e) => {
                return Ok(cannot_run(
                    args.json,
                    "cannot recover the store",
                    &e,
                    "--data-dir names the damaged store (it is only read), --out a new directory",
                ))
            }
        };
    let lost = !report.payloads_lost.is_empty() || !report.unreadable.is_empty();
    if args.json {
        println!("{}", serde_json::to_value(&report)?);
    } else {
        match &report.database_error {
            None => println!("database: read (from a copy)"),
            Some(why) => {
                println!("database: unreadable ({why}); messages came from their sidecars")
            }
        }
        println!(
            "saved: {} message(s) ({} from the database, {} from sidecars), {} payload(s)",
            report.messages_saved,
            report.from_database,
            report.from_sidecars,
            report.payloads_saved
        );
        for p in &report.payloads_lost {
            println!("lost payload: {p}");
        }
        for u in &report.unreadable {
            println!("unreadable: {u}");
        }
        if !report.other_trees.is_empty() {
            println!("copied as they were: {}", report.other_trees.join(", "));
        }
        println!(
            "recovered store: {} (the damaged store at {} is unchanged). Point store.path \
             at it, or move it into place, then start Varti.",
            report.out.display(),
            args.data_dir.display()
        );
    }
    Ok(if lost {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let dir = args.store.resolve()?;
    if !dir.join("db").exists() {
        return Ok(cannot_run(
            args.json,
            "cannot back up the store",
            &format!("there is no store at {}", dir.display()),
            "name the store directory with --data-dir (the one holding db/ and payloads/)",
        ));
    }
    let store = match SledStore::open(&dir) {
        Ok(store) => store,
        Err(e) => {
            return Ok(cannot_run(
                args.json,
                "cannot open the store",
                &e,
                "sled allows one process: stop the varti serve using it, or let serve write \
                 backups itself (store.backup_dir)",
            ))
        }
    };
    let to_stdout = args.out.as_os_str() == "-";
    let summary = if to_stdout {
        let stdout = io::stdout();
        let mut out = io::BufWriter::with_capacity(256 * 1024, stdout.lock());
        let summary = store.backup(&mut out, OffsetDateTime::now_utc())?;
        out.flush()?;
        summary
    } else {
        write_backup_file(&store, &args.out)?
    };
    let text = format!(
        "backup written: {} message(s), {} payload(s), SHA-256 {}{}",
        summary.messages,
        summary.payloads,
        summary.sha256,
        if to_stdout {
            String::new()
        } else {
            format!(" → {}", args.out.display())
        }
    );
    match (args.json, to_stdout) {
        (true, false) => println!("{}", serde_json::to_value(&summary)?),
        (true, true) => eprintln!("{}", serde_json::to_value(&summary)?),
        (false, false) => println!("{text}"),
        (false, true) => eprintln!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a backup of `store` to `path` via `path.partial`, fsync'd, then renamed.
pub(crate) fn write_backup_file(
    store: &SledStore,
    path: &Path,
) -> anyhow::Result<varti_store::BackupSummary> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let file = fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = io::BufWriter::with_capacity(256 * 1024, file);
        let summary = store.backup(&mut out, OffsetDateTime::now_utc())?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", partial.display()))?;
        fs::rename(&partial, path)
            .with_context(|| format!("cannot move the backup to {}", path.display()))?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let result = if args.file.as_os_str() == "-" {
        let stdin = io::stdin();
        let mut input = stdin.lock();
        varti_store::restore_backup(&mut input, &args.data_dir)
    } else {
        match fs::File::open(&args.file) {
            Ok(file) => {
                let mut input: Box<dyn Read> = Box::new(file);
                varti_store::restore_backup(&mut input, &args.data_dir)
            }
            Err(e) => {
                return Ok(cannot_run(
                    args.json,
                    &format!("cannot open {}", args.file.display()),
                    &e,
                    "name a backup file written by `varti db backup`",
                ))
            }
        }
    };
    match result {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_value(&summary)?);
            } else {
                println!(
                    "restored {} message(s), {} payload(s) into {} (backup SHA-256 {} verified)",
                    summary.messages,
                    summary.payloads,
                    args.data_dir.display(),
                    summary.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(cannot_run(
            args.json,
            "cannot restore",
            &e,
            "nothing was written; use a complete backup from `varti db backup` and a new \
             directory",
        )),
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    match varti_store::postgres::migrate(&args.database) {
        Ok(applied) => {
            let version = varti_store::postgres::SCHEMA_VERSION;
            if args.json {
                println!(
                    "{}",
                    json!({ "applied": applied, "schema_version": version })
                );
            } else if applied.is_empty() {
                println!("schema already at version {version}: nothing to apply");
            } else {
                let list: Vec<String> = applied.iter().map(i32::to_string).collect();
                println!(
                    "applied migration(s) {}; schema now at version {version}",
                    list.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.json {
                println!("{}", json!({ "error": e.to_string() }));
            } else {
                eprintln!(
                    "error: cannot migrate the database: {e}\n  hint: check the connection string \
                     (host, port, user, dbname) and that the user may create tables"
                );
            }
            Ok(exit_cannot_run())
        }
    }
}
