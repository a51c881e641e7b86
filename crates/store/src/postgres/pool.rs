//! A small blocking connection pool with bounded retries on connection failures.
//!
//! Why our own: the store needs exactly three things a generic pool does not give in one
//! place — a `search_path` on every connection (tests and multi-tenant setups use a schema),
//! dropping *every* idle connection when one proves to point at a dead or demoted primary
//! (after a failover they all do), and re-running a whole operation on a fresh connection.
//! Each connection also keeps the statements the store runs often prepared ([`Tx`]).

use super::PgOptions;
use crate::StoreError;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, Statement, Transaction};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an operation waits for a free connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a failed attempt of an operation ended.
pub(crate) enum Fail {
    /// The database client reported an error (it may be retryable).
    Pg(postgres::Error),
    /// The store's own verdict (not found, conflict, …): final.
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

/// What a retried operation knows about its earlier attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// True if an earlier attempt failed on a connection error, so its COMMIT may have
    /// reached the server although the answer was lost: the operation must recognise its own
    /// earlier effect (by its operation id) instead of reporting a conflict with itself.
    pub retrying: bool,
}

/// Connections to one database (possibly several hosts, the first read-write one wins).
pub(crate) struct Pool {
    config: Config,
    max: usize,
    retry_attempts: u32,
    retry_backoff: Duration,
    retry_backoff_max: Duration,
    inner: Mutex<Slots>,
    freed: Condvar,
}

/// Most statements one connection keeps prepared: the store's frequent statements are a
/// few dozen fixed texts; a text beyond the bound is prepared for its use only.
const MAX_PREPARED: usize = 64;

/// A pooled connection, with the statements prepared on it so far.
pub(crate) struct Session {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Session {
    /// Begins a transaction whose statements are prepared once per connection ([`Tx`]).
    pub(crate) fn begin(&mut self) -> Result<Tx<'_>, postgres::Error> {
        Ok(Tx {
            tx: self.client.transaction()?,
            prepared: &mut self.prepared,
        })
    }
}

/// A transaction that runs each statement text through the connection's prepared
/// statements. Given a text, the client prepares it (one round trip, the server parses and
/// plans it) and then runs it (a second round trip), at every use; a statement prepared
/// once per connection is run in one round trip, without the parse. The frequent
/// operations (storing a message, claiming, recording an attempt) run a handful of
/// statements each, so this halves their round trips. Texts built from a caller's filter
/// go through [`Tx::query_once`] instead, so that they do not fill the connection's set.
pub(crate) struct Tx<'a> {
    tx: Transaction<'a>,
    prepared: &'a mut HashMap<String, Statement>,
}

impl Tx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql)?;
        if self.prepared.len() < MAX_PREPARED {
            self.prepared.insert(sql.to_owned(), statement.clone());
        }
        Ok(statement)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.execute(&statement, params)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query(&statement, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_opt(&statement, params)
    }

    /// Runs a text that is not kept prepared (one built from a caller's filter).
    pub(crate) fn query_once(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        self.tx.query(sql, params)
    }

    pub(crate) fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
}

struct Slots {
    idle: Vec<Session>,
    /// Connections that exist (idle or in use).
    open: usize,
}

/// A connection borrowed from the pool; returned on drop unless it was marked broken.
pub(crate) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Session>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.client.as_ref().expect("connection present until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.client.as_mut().expect("connection present until drop")
    }
}

impl Drop for Pool {
    /// The synchronous PostgreSQL client closes a connection by blocking on a runtime of
    /// its own, which panics on a thread that already runs an async runtime — and the last
    /// holder of the store may well be dropped there (a serving process shutting down). The
    /// idle connections are therefore closed on a thread of their own.
    fn drop(&mut self) {
        let idle =
            std::mem::take(&mut self.inner.get_mut().unwrap_or_else(|p| p.into_inner()).idle);
        if idle.is_empty() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("pg-pool-close".into())
            .spawn(move || drop(idle))
            .map(|closing| closing.join());
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let client = self.client.take();
        let mut slots = self.pool.inner.lock().unwrap_or_else(|p| p.into_inner());
        match client {
            Some(c) if !c.is_closed() => slots.idle.push(c),
            _ => slots.open -= 1,
        }
        drop(slots);
        self.pool.freed.notify_one();
    }
}

impl Conn<'_> {
    /// Closes this connection instead of returning it, and every idle one too: after a
    /// connection error they most likely all lead to the same dead or demoted server.
    fn discard_all(mut self) {
        let client = self.client.take();
        drop(client);
        let stale = {
            let mut slots = self.pool.inner.lock().unwrap_or_else(|p| p.into_inner());
            let stale = std::mem::take(&mut slots.idle);
            slots.open -= stale.len();
            stale
        };
        drop(stale);
        // `drop(self)` now counts this connection as gone.
    }
}

impl Pool {
    /// A pool for `url` (a libpq key=value string or a `postgresql://` URL), setting
    /// `search_path` to `options.schema` on every connection.
    pub(crate) fn new(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let mut config: Config = url.parse().map_err(|e| {
            StoreError::InvalidInput(format!(
                "the database connection string is not valid: {e} (use `host=… port=… \
                 user=… dbname=…` or `postgresql://user@host:port/dbname`; several hosts \
                 are separated by commas)"
            ))
        })?;
        if let Some(schema) = &options.schema {
            validate_schema_name(schema)?;
            // Sent in the start-up packet, so every pooled connection has it without a
            // round trip; kept after any options the connection string already sets.
            let ours = format!("-c search_path={schema}");
            let all = match config.get_options() {
                Some(theirs) if !theirs.is_empty() => format!("{theirs} {ours}"),
                _ => ours,
            };
            config.options(&all);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("varti");
        }
        Ok(Pool {
            config,
            max: options.max_connections.max(1),
            retry_attempts: options.retry_attempts.max(1),
            retry_backoff: options.retry_backoff,
            retry_backoff_max: options.retry_backoff_max,
            inner: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// Borrows a connection: an idle one, or a new one if fewer than the maximum exist.
    pub(crate) fn get(&self) -> Result<Conn<'_>, Fail> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut slots = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(client) = slots.idle.pop() {
                if client.is_closed() {
                    slots.open -= 1;
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                });
            }
            if slots.open < self.max {
                slots.open += 1;
                drop(slots);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(Conn {
                        pool: self,
                        client: Some(Session {
                            client,
                            prepared: HashMap::new(),
                        }),
                    }),
                    Err(e) => {
                        let mut slots = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                        slots.open -= 1;
                        drop(slots);
                        self.freed.notify_one();
                        Err(Fail::Pg(e))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail::Store(StoreError::Database(format!(
                    "all {} database connections stayed busy for {}s (raise max_connections \
                     or look for slow queries)",
                    self.max,
                    ACQUIRE_TIMEOUT.as_secs()
                ))));
            }
            slots = self
                .freed
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs `op` on a pooled connection. On a connection error (server gone, failover,
    /// read-only after demotion) or a serialization failure it runs `op` again, on a fresh
    /// connection, up to the configured number of attempts with exponential backoff. `what`
    /// names the operation in errors and logs.
    ///
    /// Every caller's `op` is a single transaction whose repetition is harmless (see the
    /// module documentation of [`super`]): that is what makes retrying safe.
    pub(crate) fn run<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&mut Session, Attempt) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut backoff = self.retry_backoff;
        let mut retrying = false;
        let mut attempt = 1;
        loop {
            let result = self.get().and_then(|mut conn| {
                let out = op(&mut conn, Attempt { retrying });
                if let Err(Fail::Pg(e)) = &out {
                    // After a migration every connection's prepared statements are stale:
                    // they go with the connections, and fresh ones prepare anew.
                    if is_connection_error(e) || is_stale_statement(e) {
                        conn.discard_all();
                    }
                }
                out
            });
            let error = match result {
                Ok(value) => return Ok(value),
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::Pg(e)) => e,
            };
            let retryable = is_connection_error(&error)
                || is_serialization_failure(&error)
                || is_stale_statement(&error);
            if !retryable || attempt >= self.retry_attempts {
                return Err(database_error(what, &error, retryable.then_some(attempt)));
            }
            tracing::warn!(operation = what, attempt, error = %describe(&error),
                "database operation failed; retrying on a fresh connection");
            // Only a lost connection can hide a commit; a serialization failure rolled back.
            retrying |= is_connection_error(&error);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.retry_backoff_max);
            attempt += 1;
        }
    }
}

/// Whether the error means the connection (or the server behind it) is unusable: the
/// operation may succeed on a new connection, possibly to another host of a multi-host
/// connection string.
pub(crate) fn is_connection_error(e: &postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return code.code().starts_with("08") // connection_exception class
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            // A primary demoted to standby refuses writes: reconnect to find the new one.
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
    }
    if e.is_closed() {
        return true;
    }
    let source_is_io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    // tokio-postgres exposes no error kind; these are its messages for I/O, connect, timeout
    // and protocol failures (as opposed to parameter or column conversion errors).
    let text = e.to_string();
    source_is_io
        || [
            "error communicating with the server",
            "error connecting to server",
            "timeout waiting for server",
            "error performing TLS handshake",
            "unexpected message from server",
            "error parsing response from server",
        ]
        .iter()
        .any(|m| text.starts_with(m))
}

/// Whether a statement prepared on the connection no longer fits the schema (a migration
/// changed a table it reads while the connection was open), or the server no longer has it
/// (a pooler in between that does not keep prepared statements, a `DISCARD ALL`): the
/// operation is run again on a fresh connection, which prepares its statements anew.
fn is_stale_statement(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) if *code == SqlState::INVALID_SQL_STATEMENT_NAME => true,
        Some(code) if *code == SqlState::FEATURE_NOT_SUPPORTED => {
            e.as_db_error().is_some_and(|db| {
                db.message()
                    .contains("cached plan must not change result type")
            })
        }
        _ => false,
    }
}

fn is_serialization_failure(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// The error with the server's message, SQLSTATE, detail and hint when there is one.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// A [`StoreError::Database`] for a failed operation, saying what to check.
pub(crate) fn database_error(
    what: &str,
    e: &postgres::Error,
    gave_up_after: Option<u32>,
) -> StoreError {
    let advice = match gave_up_after {
        Some(n) => format!(
            " — gave up after {n} attempts: check that the PostgreSQL server (or, with a \
             multi-host connection string, one read-write server) is reachable"
        ),
        None => String::new(),
    };
    StoreError::Database(format!("PostgreSQL, {what}: {}{advice}", describe(e)))
}

/// Schema names are put into the connection options unquoted: allow only plain
/// identifiers, so nothing can be smuggled into the start-up packet.
pub(crate) fn validate_schema_name(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "schema name `{}` must be 1 to 63 characters of a-z, 0-9 and _, not starting \
             with a digit",
            schema.escape_debug()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(schema: Option<&str>) -> PgOptions {
        PgOptions {
            schema: schema.map(str::to_owned),
            ..PgOptions::default()
        }
    }

    #[test]
    fn multi_host_strings_and_schema_options_are_accepted() {
        let pool = Pool::new(
            "host=db1,db2 port=5432,5433 user=varti dbname=varti \
             target_session_attrs=read-write options='-c statement_timeout=5000'",
            &options(Some("varti_eu")),
        )
        .unwrap();
        assert_eq!(pool.config.get_hosts().len(), 2);
        assert_eq!(
            pool.config.get_options(),
            Some("-c statement_timeout=5000 -c search_path=varti_eu")
        );
        let url = Pool::new("postgresql://varti@db1:5432/varti", &options(None)).unwrap();
        assert_eq!(url.config.get_options(), None);
        assert_eq!(url.config.get_application_name(), Some("varti"));
    }

    #[test]
    fn bad_connection_strings_and_schema_names_are_refused() {
        assert!(matches!(
            Pool::new("host=a port=notaport", &options(None)),
            Err(StoreError::InvalidInput(_))
        ));
        for bad in ["", "Public", "a b", "x;drop", "1abc", &"a".repeat(64)] {
            assert!(validate_schema_name(bad).is_err(), "{bad}");
        }
        assert!(validate_schema_name("varti_test_01").is_ok());
    }
}
