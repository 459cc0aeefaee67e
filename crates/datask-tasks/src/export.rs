//! `export`: an index as CSV, JSON or JSON lines, streamed to a file that is
//! published only when complete; also the file writer every exporting
//! identifier shares.

use async_trait::async_trait;
use datask_core::index::IndexDef;
use datask_core::segment::Filter;
use datask_core::task::Counts;
use datask_data::{ExportFormat, ExportWriter};
use datask_engine::{FileStore, Handler, Invalid, Outcome, TaskContext, TaskError};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::target;

/// Flush the encoder to the file store in chunks of this size.
const CHUNK: usize = 1 << 20;

pub struct Export;

/// `target.export_format`, checked (default csv).
pub(crate) fn validate_format(t: &mut Map<String, Value>) -> Result<(), Invalid> {
    let format = target::string(t, "export_format")?
        .unwrap_or("csv")
        .to_string();
    if ExportFormat::parse(&format).is_none() {
        return Err(Invalid::new(
            "export_format",
            format!(
                "'{format}' is not one of {}",
                ExportFormat::NAMES.join(", ")
            ),
        ));
    }
    t.insert("export_format".into(), Value::String(format));
    Ok(())
}

pub(crate) fn format_of(t: &Map<String, Value>) -> ExportFormat {
    target::string(t, "export_format")
        .ok()
        .flatten()
        .and_then(ExportFormat::parse)
        .unwrap_or(ExportFormat::Csv)
}

/// Streams the rows of `index` matching `filter` into the task's result
/// file `<stem>-<task>.<ext>`; answers its key and the row count. The file
/// becomes visible only once complete.
pub(crate) async fn export_to_file(
    ctx: &TaskContext,
    index: &'static IndexDef,
    filter: Option<&Filter>,
    format: ExportFormat,
    stem: &str,
) -> Result<(String, i64), TaskError> {
    // The count (the progress total) runs beside the export rather than
    // before it: it is a scan of its own, a tenth of the export's time.
    let counting = ctx.store.count_rows(ctx.task.tenant_id, index, filter);
    tokio::pin!(counting);
    let mut counted = false;
    let name = format!("{stem}-{}.{}", ctx.task.id, format.extension());
    let key = FileStore::result_key(ctx.task.tenant_id, ctx.task.id, ctx.fence, &name);
    let mut file = ctx.files.writer(&key);
    let written = async {
        let mut encoder = ExportWriter::new(format, index);
        let mut rows = ctx
            .store
            .export_rows(ctx.task.tenant_id, index, filter)
            .await?;
        let mut done = 0i64;
        loop {
            let batch = tokio::select! {
                biased;
                total = &mut counting, if !counted => {
                    counted = true;
                    ctx.store
                        .set_progress(ctx.task.id, ctx.fence, done, Some(total?))
                        .await?;
                    continue;
                }
                batch = rows.next() => batch,
            };
            let Some(batch) = batch else { break };
            ctx.checkpoint()?;
            let batch = batch?;
            for row in &batch {
                encoder.write_row(row);
            }
            done += batch.len() as i64;
            if encoder.buffered() >= CHUNK {
                file.write_all(&encoder.take_chunk())
                    .await
                    .map_err(io_failed)?;
            }
            ctx.progress(done, None).await?;
        }
        if !counted {
            // Its answer is no longer needed, but a failure still counts.
            counting.await?;
        }
        file.write_all(&encoder.finish()).await.map_err(io_failed)?;
        // The object becomes visible only here, complete.
        file.shutdown().await.map_err(io_failed)?;
        Ok::<i64, TaskError>(done)
    }
    .await;
    let done = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = file.abort().await;
            return Err(e);
        }
    };
    ctx.progress(done, Some(done)).await?;
    Ok((key, done))
}

/// The outcome of a finished export of `rows` rows.
pub(crate) fn exported(key: String, rows: i64, output: Value) -> Outcome {
    Outcome {
        had_errors: false,
        errors: Map::new(),
        output: Some(output),
        result: Some(key),
        counts: Some(Counts {
            total: rows,
            errors: 0,
            skips: 0,
            success: rows,
        }),
    }
}

#[async_trait]
impl Handler for Export {
    fn identifier(&self) -> &'static str {
        "export"
    }

    fn segment_index(&self, t: &Map<String, Value>) -> Option<&'static IndexDef> {
        target::index(t, "export_index").ok()
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "export_index", "export_format"])?;
        target::index(t, "export_index")?;
        validate_format(t)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let index =
            target::index(t, "export_index").map_err(|e| TaskError::Fatal(e.to_string()))?;
        let format = format_of(t);
        let filter = match crate::audience::task_filter(ctx, index).await? {
            Ok(f) => f,
            Err(missing) => return Ok(missing),
        };
        let (key, rows) = export_to_file(ctx, index, filter.as_ref(), format, index.name).await?;
        Ok(exported(
            key,
            rows,
            json!({ "rows": rows, "format": format.extension(), "index": index.name }),
        ))
    }
}

fn io_failed(e: std::io::Error) -> TaskError {
    TaskError::Retryable(format!("writing the result: {e}"))
}
