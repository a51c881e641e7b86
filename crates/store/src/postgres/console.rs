//! The console's accounts and sessions in PostgreSQL (`console_users`, `console_sessions`,
//! migration 6), shared by every instance. Each call is one statement: a retry after a
//! broken connection repeats it harmlessly (upserts and deletes are idempotent).

use super::micros;
use super::pool::Pool;
use crate::console::{ConsoleSession, ConsoleUser};
use crate::StoreError;
use postgres::Row;
use time::OffsetDateTime;

pub(super) fn put_user(pool: &Pool, user: &ConsoleUser) -> Result<(), StoreError> {
    user.validate()?;
    let (created, updated) = (micros(user.created_at), micros(user.updated_at));
    pool.run("storing a console account", |client, _| {
        client.execute(
            "INSERT INTO console_users (name, role, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
             role = EXCLUDED.role, password_hash = EXCLUDED.password_hash, \
             updated_at = EXCLUDED.updated_at",
            &[
                &user.name,
                &user.role,
                &user.password_hash,
                &created,
                &updated,
            ],
        )?;
        Ok(())
    })
}

const USER_COLUMNS: &str = "name, role, password_hash, created_at, updated_at";

fn user_of(row: &Row) -> ConsoleUser {
    ConsoleUser {
        name: row.get(0),
        role: row.get(1),
        password_hash: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    }
}

pub(super) fn user(pool: &Pool, name: &str) -> Result<Option<ConsoleUser>, StoreError> {
    pool.run("reading a console account", |client, _| {
        Ok(client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM console_users WHERE name = $1"),
                &[&name],
            )?
            .map(|r| user_of(&r)))
    })
}

pub(super) fn list_users(pool: &Pool) -> Result<Vec<ConsoleUser>, StoreError> {
    pool.run("listing console accounts", |client, _| {
        Ok(client
            .query(
                &format!("SELECT {USER_COLUMNS} FROM console_users ORDER BY name"),
                &[],
            )?
            .iter()
            .map(user_of)
            .collect())
    })
}

pub(super) fn remove_user(pool: &Pool, name: &str) -> Result<bool, StoreError> {
    pool.run("removing a console account", |client, _| {
        // Its sessions go with it (ON DELETE CASCADE).
        Ok(client.execute("DELETE FROM console_users WHERE name = $1", &[&name])? > 0)
    })
}

pub(super) fn put_session(pool: &Pool, s: &ConsoleSession) -> Result<(), StoreError> {
    s.validate()?;
    let (created, seen) = (micros(s.created_at), micros(s.last_seen));
    pool.run("storing a console session", |client, _| {
        let n = client.execute(
            "INSERT INTO console_sessions (id_sha256, user_name, csrf, created_at, last_seen) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM console_users WHERE name = $2) \
             ON CONFLICT (id_sha256) DO UPDATE SET last_seen = EXCLUDED.last_seen",
            &[&s.id_sha256, &s.user, &s.csrf, &created, &seen],
        )?;
        if n == 0 {
            return Err(StoreError::InvalidInput(format!(
                "console user `{}` does not exist (removed meanwhile?)",
                s.user
            ))
            .into());
        }
        Ok(())
    })
}

pub(super) fn session(pool: &Pool, id: &str) -> Result<Option<ConsoleSession>, StoreError> {
    pool.run("reading a console session", |client, _| {
        Ok(client
            .query_opt(
                "SELECT id_sha256, user_name, csrf, created_at, last_seen \
                 FROM console_sessions WHERE id_sha256 = $1",
                &[&id],
            )?
            .map(|r| ConsoleSession {
                id_sha256: r.get(0),
                user: r.get(1),
                csrf: r.get(2),
                created_at: r.get(3),
                last_seen: r.get(4),
            }))
    })
}

pub(super) fn remove_session(pool: &Pool, id: &str) -> Result<bool, StoreError> {
    pool.run("removing a console session", |client, _| {
        Ok(client.execute("DELETE FROM console_sessions WHERE id_sha256 = $1", &[&id])? > 0)
    })
}

pub(super) fn purge_sessions(
    pool: &Pool,
    idle_before: OffsetDateTime,
    created_before: OffsetDateTime,
) -> Result<usize, StoreError> {
    let (idle, created) = (micros(idle_before), micros(created_before));
    pool.run("purging expired console sessions", |client, _| {
        Ok(client.execute(
            "DELETE FROM console_sessions WHERE last_seen < $1 OR created_at < $2",
            &[&idle, &created],
        )? as usize)
    })
}
