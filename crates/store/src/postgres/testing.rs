//! Test support (feature `testing`): a throw-away schema per test in a real PostgreSQL.
//!
//! The database comes from `VARTI_TEST_DATABASE_URL`, default
//! [`DEFAULT_TEST_DATABASE_URL`] (the machine's PostgreSQL with trust auth). When it cannot
//! be reached, [`TestSchema::empty`] panics with instructions: PostgreSQL tests fail loudly,
//! they never skip.

use super::{migrate_with, PgOptions, PgStore};

/// The test database used when `VARTI_TEST_DATABASE_URL` is not set.
pub(crate) const DEFAULT_TEST_DATABASE_URL: &str =
    "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// The test database's connection string (`VARTI_TEST_DATABASE_URL` or the default).
pub(crate) fn test_database_url() -> String {
    std::env::var("VARTI_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// A schema with a random name, dropped (with everything in it) when this guard drops.
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// Creates an empty schema. Panics, saying how to fix it, if the database is unreachable.
    pub fn empty() -> Self {
        let url = test_database_url();
        let name = format!("varti_test_{}", uuid::Uuid::new_v4().simple());
        let mut client = connect(&url);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap_or_else(|e| panic!("cannot create test schema {name}: {e}"));
        TestSchema { url, name }
    }

    /// Creates a schema and applies every migration to it.
    pub fn migrated() -> Self {
        let schema = Self::empty();
        migrate_with(&schema.url, &schema.options())
            .unwrap_or_else(|e| panic!("migrating test schema {}: {e}", schema.name));
        schema
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Store options pointing at this schema (fast retries: tests want quick failures).
    pub fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            max_connections: 6,
            retry_attempts: 3,
            ..PgOptions::default()
        }
    }

    /// A new store (its own pool) on this schema; call twice for two "instances".
    pub fn store(&self) -> PgStore {
        PgStore::connect_with(&self.url, self.options())
            .unwrap_or_else(|e| panic!("connecting a store to test schema {}: {e}", self.name))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Best effort: a leftover schema only wastes space in the test database.
        match postgres::Client::connect(&self.url, postgres::NoTls) {
            Ok(mut client) => {
                if let Err(e) =
                    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                {
                    eprintln!("warning: cannot drop test schema {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("warning: cannot drop test schema {}: {e}", self.name),
        }
    }
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "\n\nPostgreSQL tests need a database and will not skip: cannot connect to \
             `{url}`: {e} ({source}).\nStart PostgreSQL (trust auth, database `test`) on \
             127.0.0.1:5432, or point VARTI_TEST_DATABASE_URL at one.\n",
            source = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    })
}
