//! Data indexes on PostgreSQL: one UNNEST upsert per batch, rejects, and
//! streamed exports.

use std::collections::HashSet;

use datask_core::index::{ColumnType, IndexDef, Value};
use datask_core::segment::{Bound, Dialect, Filter};
use datask_core::store::{
    BatchOutcome, ImportBatch, RejectGroup, RowReject, RowStream, StoreResult,
};
use datask_core::{TaskId, TenantId};
use futures::StreamExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row};

use crate::backend;
use crate::tasks::check_fence;

fn array_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text | ColumnType::Json => "text[]",
        ColumnType::Integer | ColumnType::Time => "int8[]",
        ColumnType::Number => "float8[]",
        ColumnType::Boolean => "bool[]",
    }
}

/// How an unnested value becomes the column's type.
fn cast(ty: ColumnType, expr: &str) -> String {
    match ty {
        // Integer arithmetic keeps every microsecond.
        ColumnType::Time => format!("('epoch'::timestamptz + {expr} * interval '1 microsecond')"),
        ColumnType::Json => format!("{expr}::jsonb"),
        _ => expr.to_string(),
    }
}

/// How a column is read back as the store-neutral value.
fn select_expr(ty: ColumnType, name: &str) -> String {
    match ty {
        ColumnType::Time => format!("(EXTRACT(EPOCH FROM {name}) * 1000000)::int8"),
        ColumnType::Json => format!("{name}::text"),
        _ => name.to_string(),
    }
}

/// The batch's upsert: names come from the compiled-in schema only; every
/// value is bound, one array per column. The `WHERE` skips rows this run
/// already wrote; they come back missing from `RETURNING` as duplicates.
fn upsert_sql(index: &IndexDef, columns: &[usize]) -> String {
    let cols: Vec<&str> = columns.iter().map(|&i| index.columns[i].name).collect();
    let unnest: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("${}::{}", n + 3, array_type(index.columns[i].ty)))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|n| format!("c{n}")).collect();
    let exprs: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(n, &i)| cast(index.columns[i].ty, &format!("u.c{n}")))
        .collect();
    let updates: Vec<String> = cols
        .iter()
        .skip(1)
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .chain(["_import_run = EXCLUDED._import_run".to_string()])
        .collect();
    format!(
        "INSERT INTO {table} AS tbl (tenant_id, {cols}, _import_run)
         SELECT $1, {exprs}, $2 FROM UNNEST({unnest}) AS u({aliases})
         ON CONFLICT (tenant_id, {key}) DO UPDATE SET {updates}
         WHERE tbl._import_run IS DISTINCT FROM EXCLUDED._import_run
         RETURNING {key}",
        table = index.table,
        cols = cols.join(", "),
        exprs = exprs.join(", "),
        unnest = unnest.join(", "),
        aliases = aliases.join(", "),
        key = index.key().name,
        updates = updates.join(", "),
    )
}

fn bind_column<'q>(
    q: Query<'q, Postgres, PgArguments>,
    ty: ColumnType,
    rows: &[datask_core::store::ImportRow],
    pos: usize,
) -> Query<'q, Postgres, PgArguments> {
    let cells = rows.iter().map(|r| &r.values[pos]);
    match ty {
        ColumnType::Text | ColumnType::Json => q.bind(
            cells
                .map(|v| match v {
                    Value::Text(s) | Value::Json(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Vec<Option<String>>>(),
        ),
        ColumnType::Integer | ColumnType::Time => q.bind(
            cells
                .map(|v| match v {
                    Value::Integer(n) | Value::Time(n) => Some(*n),
                    _ => None,
                })
                .collect::<Vec<Option<i64>>>(),
        ),
        ColumnType::Number => q.bind(
            cells
                .map(|v| match v {
                    Value::Number(f) => Some(*f),
                    Value::Integer(n) => Some(*n as f64),
                    _ => None,
                })
                .collect::<Vec<Option<f64>>>(),
        ),
        ColumnType::Boolean => q.bind(
            cells
                .map(|v| match v {
                    Value::Boolean(b) => Some(*b),
                    _ => None,
                })
                .collect::<Vec<Option<bool>>>(),
        ),
    }
}

pub(crate) async fn import_batch(pool: &PgPool, batch: ImportBatch) -> StoreResult<BatchOutcome> {
    let mut tx = pool.begin().await.map_err(backend)?;
    check_fence(&mut tx, batch.task_id, batch.fence).await?;
    let mut out = BatchOutcome::default();
    let mut rejects = batch.rejects;
    if batch.dry_run {
        out.applied = batch.rows.len() as i64;
    } else if !batch.rows.is_empty() {
        let key_at = batch.columns.iter().position(|&c| c == 0).unwrap_or(0);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(upsert_sql(batch.index, &batch.columns)))
            .bind(batch.tenant_id)
            .bind(batch.run_tag);
        for (pos, &c) in batch.columns.iter().enumerate() {
            q = bind_column(q, batch.index.columns[c].ty, &batch.rows, pos);
        }
        let written: HashSet<String> = q
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .collect();
        out.applied = written.len() as i64;
        for row in &batch.rows {
            if let Value::Text(k) = &row.values[key_at]
                && !written.contains(k)
            {
                out.duplicates += 1;
                rejects.push(RowReject {
                    row: row.row,
                    code: "duplicate".into(),
                    column: None,
                    message: "duplicate key".into(),
                    raw: row.raw.clone(),
                });
            }
        }
    }
    if !rejects.is_empty() {
        sqlx::query(
            "INSERT INTO task_rejects (task_id, row, code, column_name, message, raw)
             SELECT $1, * FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])
             ON CONFLICT (task_id, row) DO UPDATE SET code = EXCLUDED.code, column_name = EXCLUDED.column_name,
                 message = EXCLUDED.message, raw = EXCLUDED.raw",
        )
        .bind(batch.task_id)
        .bind(rejects.iter().map(|r| r.row).collect::<Vec<_>>())
        .bind(rejects.iter().map(|r| r.code.clone()).collect::<Vec<_>>())
        .bind(rejects.iter().map(|r| r.column.clone()).collect::<Vec<_>>())
        .bind(rejects.iter().map(|r| r.message.clone()).collect::<Vec<_>>())
        .bind(rejects.iter().map(|r| r.raw.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    sqlx::query(
        "UPDATE tasks SET checkpoint = $2, progress_done = $3, version = version + 1 WHERE id = $1",
    )
    .bind(batch.task_id)
    .bind(sqlx::types::Json(batch.checkpoint))
    .bind(batch.progress_done)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(out)
}

pub(crate) async fn reject_summary(pool: &PgPool, task: TaskId) -> StoreResult<Vec<RejectGroup>> {
    let rows = sqlx::query(
        "SELECT code, column_name, COUNT(*), MIN(row),
                (ARRAY_AGG(row ORDER BY row))[1:4]
         FROM task_rejects WHERE task_id = $1 GROUP BY code, column_name ORDER BY MIN(row)",
    )
    .bind(task)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter()
        .map(|r| -> Result<RejectGroup, sqlx::Error> {
            Ok(RejectGroup {
                code: r.try_get(0)?,
                column: r.try_get(1)?,
                count: r.try_get(2)?,
                first_rows: r.try_get(4)?,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(backend)
}

pub(crate) async fn rejects(
    pool: &PgPool,
    task: TaskId,
    after_row: i64,
    limit: i64,
) -> StoreResult<Vec<RowReject>> {
    let rows = sqlx::query("SELECT row, code, column_name, message, raw FROM task_rejects WHERE task_id = $1 AND row > $2 ORDER BY row LIMIT $3")
        .bind(task)
        .bind(after_row)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| -> Result<RowReject, sqlx::Error> {
            Ok(RowReject {
                row: r.try_get(0)?,
                code: r.try_get(1)?,
                column: r.try_get(2)?,
                message: r.try_get(3)?,
                raw: r.try_get(4)?,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(backend)
}

fn read_row(r: &PgRow, index: &IndexDef) -> Result<Vec<Value>, sqlx::Error> {
    let mut values = Vec::with_capacity(index.columns.len());
    for (i, col) in index.columns.iter().enumerate() {
        let v = match col.ty {
            ColumnType::Text => r.try_get::<Option<String>, _>(i)?.map(Value::Text),
            ColumnType::Json => r.try_get::<Option<String>, _>(i)?.map(Value::Json),
            ColumnType::Integer => r.try_get::<Option<i64>, _>(i)?.map(Value::Integer),
            ColumnType::Time => r.try_get::<Option<i64>, _>(i)?.map(Value::Time),
            ColumnType::Number => r.try_get::<Option<f64>, _>(i)?.map(Value::Number),
            ColumnType::Boolean => r.try_get::<Option<bool>, _>(i)?.map(Value::Boolean),
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(values)
}

const EXPORT_BATCH: usize = 1024;

/// Streams an index in key order (byte order, as SQLite sorts) from a
/// spawned task; the bounded channel keeps memory flat.
/// How segments read in PostgreSQL: times as TIMESTAMPTZ, `strpos`.
struct PgDialect;

impl Dialect for PgDialect {
    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }
    fn time(&self, placeholder: &str) -> String {
        format!("('epoch'::timestamptz + {placeholder}::int8 * interval '1 microsecond')")
    }
    fn position(&self, column: &str, needle: &str) -> String {
        format!("strpos({column}, {needle})")
    }
}

/// The segment's `WHERE` fragment (placeholders from $2, the tenant being $1)
/// and its values.
pub(crate) fn segment_sql(filter: Option<&Filter>) -> (String, Vec<Bound>) {
    match filter {
        Some(f) => f.to_sql(&PgDialect, 2),
        None => ("TRUE".into(), vec![]),
    }
}

pub(crate) fn bind_bounds<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    bounds: Vec<Bound>,
) -> Query<'q, Postgres, PgArguments> {
    for b in bounds {
        q = match b {
            Bound::Text(s) => q.bind(s),
            Bound::Int(i) | Bound::Time(i) => q.bind(i),
            Bound::Float(f) => q.bind(f),
            Bound::Bool(v) => q.bind(v),
        };
    }
    q
}

pub(crate) fn export_rows(
    pool: PgPool,
    tenant: TenantId,
    index: &'static IndexDef,
    filter: Option<&Filter>,
) -> RowStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<StoreResult<Vec<Vec<Value>>>>(4);
    let (where_sql, bounds) = segment_sql(filter);
    tokio::spawn(async move {
        let cols: Vec<String> = index
            .columns
            .iter()
            .map(|c| select_expr(c.ty, c.name))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant_id = $1 AND {where_sql} ORDER BY {} COLLATE \"C\"",
            cols.join(", "),
            index.table,
            index.key().name
        );
        let query = bind_bounds(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant), bounds);
        let mut rows = query.fetch(&pool);
        let mut chunk = Vec::with_capacity(EXPORT_BATCH);
        while let Some(row) = rows.next().await {
            let values = row.and_then(|r| read_row(&r, index)).map_err(backend);
            match values {
                Ok(v) => chunk.push(v),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            if chunk.len() == EXPORT_BATCH
                && tx
                    .send(Ok(std::mem::replace(
                        &mut chunk,
                        Vec::with_capacity(EXPORT_BATCH),
                    )))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(chunk)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}
