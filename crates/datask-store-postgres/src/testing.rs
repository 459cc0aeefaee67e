//! Isolated databases for tests: one server, a fresh database per test.

use crate::PgStore;

/// Creates a uniquely named database on the server of `base_url` and
/// answers its URL.
pub async fn fresh_database(base_url: &str) -> String {
    let name = format!("datask_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(base_url)
        .await
        .expect("connect to the test server");
    // The name is made here of hex digits, never taken from input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create a test database");
    admin.close().await;
    let (without_query, query) = match base_url.split_once('?') {
        Some((a, q)) => (a, format!("?{q}")),
        None => (base_url, String::new()),
    };
    // postgres://user@host:port[/db]: keep everything up to the database.
    let after_scheme = without_query.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match without_query[after_scheme..].find('/') {
        Some(i) => &without_query[..after_scheme + i],
        None => without_query,
    };
    format!("{server}/{name}{query}")
}

/// A migrated store on a fresh database.
pub async fn fresh_store(base_url: &str) -> PgStore {
    let url = fresh_database(base_url).await;
    let store = PgStore::connect(&url)
        .await
        .expect("connect to the test database");
    store.migrate().await.expect("migrate the test database");
    store
}
