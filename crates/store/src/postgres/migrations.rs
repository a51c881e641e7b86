//! Versioned schema migrations, embedded in the binary.
//!
//! Each migration is a numbered SQL file in `migrations/`, applied once, in order, inside one
//! transaction together with its row in `schema_migrations`; a transaction-scoped advisory
//! lock makes two instances (or `varti db migrate` run twice) wait for each other instead of
//! racing. A released migration is never edited: a change is a new file with the next number.

use super::pool::{database_error, Fail, Pool};
use crate::StoreError;
use postgres::error::SqlState;
use postgres::Client;

/// One migration: its version (the file's number) and SQL.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration this binary knows, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "message properties",
        sql: include_str!("migrations/0002_properties.sql"),
    },
    Migration {
        version: 3,
        name: "seen signals",
        sql: include_str!("migrations/0003_seen_signals.sql"),
    },
    Migration {
        version: 4,
        name: "audit trail",
        sql: include_str!("migrations/0004_audit.sql"),
    },
    Migration {
        version: 5,
        name: "search",
        sql: include_str!("migrations/0005_search.sql"),
    },
    Migration {
        version: 6,
        name: "console",
        sql: include_str!("migrations/0006_console.sql"),
    },
    Migration {
        version: 7,
        name: "two data centres",
        sql: include_str!("migrations/0007_two_dc.sql"),
    },
    Migration {
        version: 8,
        name: "previews",
        sql: include_str!("migrations/0008_previews.sql"),
    },
];

/// The schema version this binary needs (the newest migration it carries).
pub const SCHEMA_VERSION: i32 = 8;

/// Advisory lock key shared by every Varti migration (an arbitrary constant: "VARTI_MG").
const LOCK_KEY: i64 = 0x5641_5254_495f_4d47;

/// Applies the migrations the database lacks, each in order, all in one transaction.
/// Returns the versions applied (empty if the schema was already current).
pub(crate) fn apply(pool: &Pool, schema: Option<&str>) -> Result<Vec<i32>, StoreError> {
    pool.run("migrating the schema", |client, _| {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        if let Some(schema) = schema {
            // The name was validated as a plain identifier when the pool was built.
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )",
        )?;
        let current: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )?
            .get(0);
        refuse_newer(current)?;
        let mut applied = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            tx.batch_execute(m.sql).map_err(|e| {
                Fail::Store(database_error(
                    &format!("applying migration {} ({})", m.version, m.name),
                    &e,
                    None,
                ))
            })?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )?;
            applied.push(m.version);
        }
        tx.commit()?;
        Ok(applied)
    })
}

/// Checks at start-up that the schema is exactly the version this binary needs.
pub(crate) fn check(client: &mut Client) -> Result<(), Fail> {
    let current: i32 = match client.query_one(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        &[],
    ) {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(e.into()),
    };
    refuse_newer(current)?;
    if current < SCHEMA_VERSION {
        return Err(Fail::Store(StoreError::Database(format!(
            "the database schema is at version {current}, this Varti needs version \
             {SCHEMA_VERSION}: run `varti db migrate --database URL` first"
        ))));
    }
    Ok(())
}

fn refuse_newer(current: i32) -> Result<(), Fail> {
    if current > SCHEMA_VERSION {
        return Err(Fail::Store(StoreError::Database(format!(
            "the database schema is at version {current}, newer than the version \
             {SCHEMA_VERSION} this Varti binary knows: an upgraded instance migrated it; \
             upgrade this instance too (never run an older binary against a newer schema)"
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                i as i32 + 1,
                "migration {} is out of order",
                m.name
            );
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
