//! Customer data on PostgreSQL beyond imports and exports: deletions and
//! erasures by filter, profile lookups, saved segments.

use datask_core::TenantId;
use datask_core::index::IndexDef;
use datask_core::segment::{Bound, Filter};
use datask_core::store::{SavedSegment, StoreError, StoreResult};
use jiff::Timestamp;
use serde_json::Value as Json;
use sqlx::postgres::PgRow;
use sqlx::types::Json as J;
use sqlx::{PgPool, Row};

use crate::backend;
use crate::data::{bind_bounds, segment_sql};
use crate::time::{PgTime, pg};

pub(crate) async fn delete_rows(
    pool: &PgPool,
    tenant: TenantId,
    index: &'static IndexDef,
    filter: &Filter,
) -> StoreResult<i64> {
    let (where_sql, bounds) = segment_sql(Some(filter));
    let sql = format!(
        "DELETE FROM {} WHERE tenant_id = $1 AND {where_sql}",
        index.table
    );
    execute(pool, sql, tenant, bounds).await
}

/// Runs a statement whose `$1` is the tenant and whose other parameters
/// are `bounds`; answers the rows it touched.
async fn execute(
    pool: &PgPool,
    sql: String,
    tenant: TenantId,
    bounds: Vec<Bound>,
) -> StoreResult<i64> {
    let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
    let done = bind_bounds(q, bounds)
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() as i64)
}

pub(crate) async fn clear_fields(
    pool: &PgPool,
    tenant: TenantId,
    index: &'static IndexDef,
    filter: &Filter,
    columns: &[&'static str],
    attributes: &[String],
) -> StoreResult<i64> {
    let (where_sql, mut bounds) = segment_sql(Some(filter));
    let mut sets: Vec<String> = columns
        .iter()
        .filter(|c| index.column(c).is_some())
        .map(|c| format!("{c} = NULL"))
        .collect();
    if !attributes.is_empty() && index.column("attributes").is_some() {
        let mut names = Vec::new();
        for a in attributes {
            bounds.push(Bound::Text(a.clone()));
            names.push(format!("${}::text", bounds.len() + 1));
        }
        sets.push(format!(
            "attributes = attributes - ARRAY[{}]",
            names.join(", ")
        ));
    }
    if sets.is_empty() {
        return Err(StoreError::backend(std::io::Error::other(
            "nothing to clear",
        )));
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE tenant_id = $1 AND {where_sql}",
        index.table,
        sets.join(", ")
    );
    execute(pool, sql, tenant, bounds).await
}

pub(crate) async fn lookup_profiles(
    pool: &PgPool,
    tenant: TenantId,
    column: &'static str,
    values: Vec<String>,
) -> StoreResult<Vec<(String, String)>> {
    if datask_core::index::USERS.column(column).is_none() {
        return Err(StoreError::backend(std::io::Error::other(
            "not a profile column",
        )));
    }
    let sql = format!(
        "SELECT {column}, user_id FROM idx_users WHERE tenant_id = $1 AND {column} = ANY($2::text[])"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(values)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(backend)
}

const SEGMENT_COLUMNS: &str = "id, tenant_id, name, filter, created_at, updated_at";

fn segment_row(r: &PgRow) -> Result<SavedSegment, sqlx::Error> {
    let filter: J<Json> = r.try_get(3)?;
    Ok(SavedSegment {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        filter: filter.0,
        created_at: r.try_get::<PgTime, _>(4)?.ts(),
        updated_at: r.try_get::<PgTime, _>(5)?.ts(),
    })
}

pub(crate) async fn create_segment(
    pool: &PgPool,
    tenant: TenantId,
    name: String,
    filter: Json,
    now: Timestamp,
) -> StoreResult<SavedSegment> {
    let sql = format!(
        "INSERT INTO segments (tenant_id, name, filter, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4) RETURNING {SEGMENT_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(name)
        .bind(J(filter))
        .bind(pg(now))
        .fetch_one(pool)
        .await
        .map_err(backend)?;
    segment_row(&row).map_err(backend)
}

pub(crate) async fn get_segment(
    pool: &PgPool,
    tenant: TenantId,
    id: i64,
) -> StoreResult<Option<SavedSegment>> {
    let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE id = $1 AND tenant_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
        .map_err(backend)?;
    row.as_ref().map(segment_row).transpose().map_err(backend)
}

pub(crate) async fn list_segments(
    pool: &PgPool,
    tenant: TenantId,
) -> StoreResult<Vec<SavedSegment>> {
    let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE tenant_id = $1 ORDER BY id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(segment_row)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

pub(crate) async fn update_segment(
    pool: &PgPool,
    tenant: TenantId,
    id: i64,
    name: String,
    filter: Json,
    now: Timestamp,
) -> StoreResult<SavedSegment> {
    let sql = format!(
        "UPDATE segments SET name = $3, filter = $4, updated_at = $5
         WHERE id = $1 AND tenant_id = $2 RETURNING {SEGMENT_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(tenant)
        .bind(name)
        .bind(J(filter))
        .bind(pg(now))
        .fetch_optional(pool)
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound)?;
    segment_row(&row).map_err(backend)
}

pub(crate) async fn delete_segment(pool: &PgPool, tenant: TenantId, id: i64) -> StoreResult<()> {
    let done = sqlx::query("DELETE FROM segments WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(tenant)
        .execute(pool)
        .await
        .map_err(backend)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}
