//! Data indexes on SQLite: batched upserts with duplicate detection, import
//! rejects, and streamed exports.

use std::sync::Arc;

use datask_core::TaskId;
use datask_core::TenantId;
use datask_core::index::{ColumnType, IndexDef, Value};
use datask_core::segment::{Bound, Dialect, Filter};
use datask_core::store::{
    BatchOutcome, ImportBatch, RejectGroup, RowReject, RowStream, StoreError,
};
use futures::StreamExt;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql, params};

use crate::tasks::check_fence;
use crate::{Failure, Inner};

/// Binds a typed cell the way this store keeps it.
struct Cell<'a>(&'a Value);

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Text(s) | Value::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Integer(i) | Value::Time(i) => {
                ToSqlOutput::Owned(rusqlite::types::Value::Integer(*i))
            }
            Value::Number(f) => ToSqlOutput::Owned(rusqlite::types::Value::Real(*f)),
            Value::Boolean(b) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*b as i64)),
        })
    }
}

/// `INSERT … ON CONFLICT DO UPDATE` for the given columns. Names come from
/// the compiled-in index schema only. The `WHERE` skips rows this run already
/// wrote, which is how duplicates are found without holding keys in memory.
fn upsert_sql(index: &IndexDef, columns: &[usize]) -> String {
    let names: Vec<&str> = columns.iter().map(|&i| index.columns[i].name).collect();
    let placeholders: Vec<String> = (0..names.len()).map(|i| format!("?{}", i + 2)).collect();
    let updates: Vec<String> = names
        .iter()
        .skip(index.key_len)
        .map(|n| {
            if index.column(n).is_some_and(|(_, c)| c.merge) {
                // Custom attributes merge into what is there; a key given
                // as null is removed; an empty cell changes nothing.
                format!(
                    "{n} = CASE WHEN excluded.{n} IS NULL THEN {t}.{n} \
                     ELSE json_patch(COALESCE({t}.{n}, '{{}}'), excluded.{n}) END",
                    t = index.table
                )
            } else if index.column(n).is_some_and(|(_, c)| c.kept) {
                format!("{n} = COALESCE({t}.{n}, excluded.{n})", t = index.table)
            } else {
                format!("{n} = excluded.{n}")
            }
        })
        .chain(["_import_run = excluded._import_run".to_string()])
        .collect();
    format!(
        "INSERT INTO {table} (tenant_id, {cols}, _import_run) VALUES (?1, {ph}, ?{run})
         ON CONFLICT (tenant_id, {key}) DO UPDATE SET {updates}
         WHERE {table}._import_run IS NOT excluded._import_run",
        table = index.table,
        cols = names.join(", "),
        ph = placeholders.join(", "),
        run = names.len() + 2,
        key = index.key_sql(),
        updates = updates.join(", "),
    )
}

pub(crate) fn import_batch(
    c: &mut Connection,
    batch: ImportBatch,
) -> Result<BatchOutcome, Failure> {
    let tx = c.savepoint()?;
    check_fence(&tx, batch.task_id, batch.fence)?;
    let mut out = BatchOutcome::default();
    let mut insert_reject = tx.prepare_cached(
        "INSERT OR REPLACE INTO task_rejects (task_id, row, code, column_name, message, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    if batch.dry_run {
        out.applied = batch.rows.len() as i64;
    } else {
        let mut upsert = tx.prepare_cached(&upsert_sql(batch.index, &batch.columns))?;
        for row in &batch.rows {
            let cells: Vec<Cell> = row.values.iter().map(Cell).collect();
            let mut args: Vec<&dyn ToSql> = Vec::with_capacity(cells.len() + 2);
            args.push(&batch.tenant_id);
            for cell in &cells {
                args.push(cell);
            }
            args.push(&batch.run_tag);
            if upsert.execute(args.as_slice())? == 0 {
                out.duplicates += 1;
                insert_reject.execute(params![
                    batch.task_id,
                    row.row,
                    "duplicate",
                    None::<String>,
                    "duplicate key",
                    row.raw
                ])?;
            } else {
                out.applied += 1;
            }
        }
    }
    for r in &batch.rejects {
        insert_reject.execute(params![
            batch.task_id,
            r.row,
            r.code,
            r.column,
            r.message,
            r.raw
        ])?;
    }
    drop(insert_reject);
    tx.prepare_cached(
        "UPDATE tasks SET checkpoint = ?2, progress_done = ?3, version = version + 1 WHERE id = ?1",
    )?
    .execute(params![
        batch.task_id,
        batch.checkpoint.to_string(),
        batch.progress_done
    ])?;
    tx.commit()?;
    Ok(out)
}

pub(crate) fn reject_summary(c: &Connection, task: TaskId) -> Result<Vec<RejectGroup>, Failure> {
    let mut stmt = c.prepare_cached(
        "SELECT code, column_name, COUNT(*), MIN(row),
                (SELECT json_group_array(row) FROM (SELECT row FROM task_rejects r2
                   WHERE r2.task_id = r.task_id AND r2.code = r.code AND r2.column_name IS r.column_name
                   ORDER BY row LIMIT 4))
         FROM task_rejects r WHERE task_id = ?1 GROUP BY code, column_name ORDER BY MIN(row)",
    )?;
    let groups = stmt
        .query_map([task], |r| {
            let rows: String = r.get(4)?;
            Ok(RejectGroup {
                code: r.get(0)?,
                column: r.get(1)?,
                count: r.get(2)?,
                first_rows: serde_json::from_str(&rows).unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(groups)
}

pub(crate) fn rejects(
    c: &Connection,
    task: TaskId,
    after_row: i64,
    limit: i64,
) -> Result<Vec<RowReject>, Failure> {
    let mut stmt = c.prepare_cached(
        "SELECT row, code, column_name, message, raw FROM task_rejects WHERE task_id = ?1 AND row > ?2 ORDER BY row LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![task, after_row, limit], |r| {
            Ok(RowReject {
                row: r.get(0)?,
                code: r.get(1)?,
                column: r.get(2)?,
                message: r.get(3)?,
                raw: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

const EXPORT_BATCH: usize = 1024;

/// Streams an index from a dedicated connection on a blocking thread; the
/// bounded channel keeps memory flat when the consumer is slower.
/// How segments read in SQLite: integer-microsecond times, `instr`.
struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn placeholder(&self, n: usize) -> String {
        format!("?{n}")
    }
    fn time(&self, placeholder: &str) -> String {
        placeholder.to_string()
    }
    fn position(&self, column: &str, needle: &str) -> String {
        format!("instr({column}, {needle})")
    }
    fn attribute(&self, name: &str, ty: ColumnType) -> String {
        let types = match ty {
            ColumnType::Text | ColumnType::Time => "'text'",
            ColumnType::Integer | ColumnType::Number => "'integer', 'real'",
            ColumnType::Boolean => "'true', 'false'",
            ColumnType::Json => "'object'",
        };
        format!(
            "(CASE WHEN json_type(attributes, '$.' || {name}) IN ({types}) \
             THEN json_extract(attributes, '$.' || {name}) END)"
        )
    }
}

/// The segment's `WHERE` fragment (placeholders from ?2, the tenant being ?1)
/// and its values.
pub(crate) fn segment_sql(filter: Option<&Filter>) -> (String, Vec<rusqlite::types::Value>) {
    let Some(f) = filter else {
        return ("1 = 1".into(), vec![]);
    };
    let (sql, bounds) = f.to_sql(&SqliteDialect, 2);
    let values = bounds
        .into_iter()
        .map(|b| match b {
            Bound::Text(s) => s.into(),
            Bound::Int(i) | Bound::Time(i) => i.into(),
            Bound::Float(f) => f.into(),
            Bound::Bool(b) => (b as i64).into(),
        })
        .collect();
    (sql, values)
}

pub(crate) fn export_rows(
    inner: Arc<Inner>,
    tenant: TenantId,
    index: &'static IndexDef,
    filter: Option<&Filter>,
) -> RowStream {
    let (where_sql, filter_args) = segment_sql(filter);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Vec<Value>>, StoreError>>(4);
    tokio::task::spawn_blocking(move || {
        let result = (|| -> Result<(), Failure> {
            let conn = inner.take_reader()?;
            {
                let cols: Vec<&str> = index.columns.iter().map(|c| c.name).collect();
                let sql = format!(
                    "SELECT {} FROM {} WHERE tenant_id = ?1 AND {where_sql} ORDER BY {}",
                    cols.join(", "),
                    index.table,
                    index.key_sql()
                );
                let mut stmt = conn.prepare(&sql)?;
                let mut args: Vec<rusqlite::types::Value> = vec![tenant.into()];
                args.extend(filter_args);
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                let mut chunk = Vec::with_capacity(EXPORT_BATCH);
                while let Some(r) = rows.next()? {
                    let mut values = Vec::with_capacity(index.columns.len());
                    for (i, col) in index.columns.iter().enumerate() {
                        values.push(read_cell(r.get_ref(i)?, col.ty));
                    }
                    chunk.push(values);
                    if chunk.len() == EXPORT_BATCH
                        && tx
                            .blocking_send(Ok(std::mem::replace(
                                &mut chunk,
                                Vec::with_capacity(EXPORT_BATCH),
                            )))
                            .is_err()
                    {
                        return Ok(()); // the reader went away
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.blocking_send(Ok(chunk));
                }
            }
            inner.return_reader(conn);
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e.into()));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

fn read_cell(v: ValueRef<'_>, ty: ColumnType) -> Value {
    match (v, ty) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(i), ColumnType::Boolean) => Value::Boolean(i != 0),
        (ValueRef::Integer(i), ColumnType::Time) => Value::Time(i),
        (ValueRef::Integer(i), ColumnType::Number) => Value::Number(i as f64),
        (ValueRef::Integer(i), _) => Value::Integer(i),
        (ValueRef::Real(f), _) => Value::Number(f),
        (ValueRef::Text(t), ColumnType::Json) => {
            Value::Json(String::from_utf8_lossy(t).into_owned())
        }
        (ValueRef::Text(t), _) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        (ValueRef::Blob(b), _) => Value::Text(String::from_utf8_lossy(b).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migration's tables must carry exactly the columns of the schema.
    #[test]
    fn tables_match_index_schema() {
        let conn = Connection::open_in_memory().unwrap();
        for (_, sql) in crate::MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        for index in datask_core::index::ALL {
            let mut stmt = conn
                .prepare(&format!("PRAGMA table_info({})", index.table))
                .unwrap();
            let cols: Vec<String> = stmt
                .query_map([], |r| r.get(1))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut expected = vec!["tenant_id".to_string()];
            expected.extend(index.columns.iter().map(|c| c.name.to_string()));
            expected.push("_import_run".to_string());
            assert_eq!(cols, expected, "{}", index.table);
        }
    }
}
