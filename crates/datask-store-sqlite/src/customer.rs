//! Customer data on SQLite beyond imports and exports: deletions and
//! erasures by filter, profile lookups, saved segments.

use datask_core::TenantId;
use datask_core::index::IndexDef;
use datask_core::segment::Filter;
use datask_core::store::{SavedSegment, StoreError};
use jiff::Timestamp;
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::data::segment_sql;
use crate::{Failure, from_micros, micros};

fn args(tenant: TenantId, rest: Vec<Sql>) -> Vec<Sql> {
    let mut all = vec![Sql::from(tenant)];
    all.extend(rest);
    all
}

pub(crate) fn delete_rows(
    c: &mut Connection,
    tenant: TenantId,
    index: &'static IndexDef,
    filter: &Filter,
) -> Result<i64, Failure> {
    let (where_sql, values) = segment_sql(Some(filter));
    let sql = format!(
        "DELETE FROM {} WHERE tenant_id = ?1 AND {where_sql}",
        index.table
    );
    Ok(c.execute(&sql, rusqlite::params_from_iter(args(tenant, values)))? as i64)
}

pub(crate) fn clear_fields(
    c: &mut Connection,
    tenant: TenantId,
    index: &'static IndexDef,
    filter: &Filter,
    columns: &[&'static str],
    attributes: &[String],
) -> Result<i64, Failure> {
    let (where_sql, mut values) = segment_sql(Some(filter));
    let mut sets: Vec<String> = columns
        .iter()
        .filter(|c| index.column(c).is_some())
        .map(|c| format!("{c} = NULL"))
        .collect();
    if !attributes.is_empty() && index.column("attributes").is_some() {
        // Paths are bound after the filter's values.
        let mut paths = Vec::new();
        for a in attributes {
            values.push(Sql::from(format!("$.{a}")));
            paths.push(format!("?{}", values.len() + 1));
        }
        sets.push(format!(
            "attributes = CASE WHEN attributes IS NULL THEN NULL ELSE json_remove(attributes, {}) END",
            paths.join(", ")
        ));
    }
    if sets.is_empty() {
        return Err(StoreError::backend(std::io::Error::other("nothing to clear")).into());
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE tenant_id = ?1 AND {where_sql}",
        index.table,
        sets.join(", ")
    );
    Ok(c.execute(&sql, rusqlite::params_from_iter(args(tenant, values)))? as i64)
}

pub(crate) fn lookup_profiles(
    c: &Connection,
    tenant: TenantId,
    column: &'static str,
    values: Vec<String>,
) -> Result<Vec<(String, String)>, Failure> {
    if datask_core::index::USERS.column(column).is_none() {
        return Err(StoreError::backend(std::io::Error::other("not a profile column")).into());
    }
    let sql = format!(
        "SELECT {column}, user_id FROM idx_users
         WHERE tenant_id = ?1 AND {column} IN (SELECT value FROM json_each(?2))"
    );
    let list = serde_json::to_string(&values)?;
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params![tenant, list], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

const SEGMENT_COLUMNS: &str = "id, tenant_id, name, filter, created_at, updated_at";

fn segment_row(r: &Row) -> rusqlite::Result<SavedSegment> {
    let filter: String = r.get(3)?;
    Ok(SavedSegment {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        filter: serde_json::from_str(&filter).unwrap_or_default(),
        created_at: from_micros(r.get(4)?),
        updated_at: from_micros(r.get(5)?),
    })
}

pub(crate) fn create_segment(
    c: &mut Connection,
    tenant: TenantId,
    name: String,
    filter: serde_json::Value,
    now: Timestamp,
) -> Result<SavedSegment, Failure> {
    let sql = format!(
        "INSERT INTO segments (tenant_id, name, filter, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?4) RETURNING {SEGMENT_COLUMNS}"
    );
    Ok(c.query_row(
        &sql,
        params![tenant, name, filter.to_string(), micros(now)],
        segment_row,
    )?)
}

pub(crate) fn get_segment(
    c: &Connection,
    tenant: TenantId,
    id: i64,
) -> Result<Option<SavedSegment>, Failure> {
    let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE id = ?1 AND tenant_id = ?2");
    Ok(c.query_row(&sql, params![id, tenant], segment_row)
        .optional()?)
}

pub(crate) fn list_segments(
    c: &Connection,
    tenant: TenantId,
) -> Result<Vec<SavedSegment>, Failure> {
    let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE tenant_id = ?1 ORDER BY id");
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt
        .query_map([tenant], segment_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(crate) fn update_segment(
    c: &mut Connection,
    tenant: TenantId,
    id: i64,
    name: String,
    filter: serde_json::Value,
    now: Timestamp,
) -> Result<SavedSegment, Failure> {
    let sql = format!(
        "UPDATE segments SET name = ?3, filter = ?4, updated_at = ?5
         WHERE id = ?1 AND tenant_id = ?2 RETURNING {SEGMENT_COLUMNS}"
    );
    c.query_row(
        &sql,
        params![id, tenant, name, filter.to_string(), micros(now)],
        segment_row,
    )
    .optional()?
    .ok_or(Failure::Store(StoreError::NotFound))
}

pub(crate) fn delete_segment(c: &mut Connection, tenant: TenantId, id: i64) -> Result<(), Failure> {
    match c.execute(
        "DELETE FROM segments WHERE id = ?1 AND tenant_id = ?2",
        params![id, tenant],
    )? {
        0 => Err(Failure::Store(StoreError::NotFound)),
        _ => Ok(()),
    }
}
