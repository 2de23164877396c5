//! Test helpers: a fresh, migrated PostgreSQL database per test.

use std::time::Duration;

use uuid::Uuid;

use crate::{PgStore, StoreError};

/// The server URL tests use: `CAS_TEST_DATABASE_URL`, else `DATABASE_URL`. It must name a
/// database the test user can connect to and a role allowed to `CREATE DATABASE`.
pub fn admin_url() -> String {
    std::env::var("CAS_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect("set DATABASE_URL (scripts/test starts a throwaway PostgreSQL and sets it)")
}

/// A throwaway database. It is left behind after the test; `scripts/test` removes the whole
/// cluster at the end.
#[derive(Debug)]
pub struct TestDb {
    /// The URL of the new database.
    pub url: String,
    /// A store on it, already migrated.
    pub store: PgStore,
}

impl TestDb {
    /// Create and migrate a new database with a unique name.
    pub async fn new() -> Result<Self, StoreError> {
        let db = Self::unmigrated().await?;
        db.store.migrate().await?;
        Ok(db)
    }

    /// Create a database without applying migrations.
    pub async fn unmigrated() -> Result<Self, StoreError> {
        let admin = admin_url();
        let name = format!("cas_test_{}", Uuid::new_v4().simple());
        let admin_store = PgStore::connect_lazy(&admin, 1, Duration::from_secs(10))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin_store.pool())
            .await?;
        admin_store.pool().close().await;
        let url = replace_database(&admin, &name);
        let store = PgStore::connect_lazy(&url, 16, Duration::from_secs(10))?;
        Ok(Self { url, store })
    }
}

/// Swap the database name in a `postgres://` URL.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            replace_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:5", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
