//! `export`: an index as CSV, JSON or JSON lines, streamed to a file that is
//! published only when complete.

use async_trait::async_trait;
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

#[async_trait]
impl Handler for Export {
    fn identifier(&self) -> &'static str {
        "export"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "export_index", "export_format"])?;
        target::index(t, "export_index")?;
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

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let index =
            target::index(t, "export_index").map_err(|e| TaskError::Fatal(e.to_string()))?;
        let format = target::string(t, "export_format")
            .ok()
            .flatten()
            .and_then(ExportFormat::parse)
            .unwrap_or(ExportFormat::Csv);
        // The segment was checked when the task was accepted; `within_days`
        // counts back from the start of this run.
        let filter = match &ctx.task.trigger.segment {
            Some(seg) => Some(
                datask_core::segment::parse(index, seg, "trigger.segment", jiff::Timestamp::now())
                    .map_err(|e| TaskError::Fatal(e.to_string()))?,
            ),
            None => None,
        };
        let total = ctx
            .store
            .count_rows(ctx.task.tenant_id, index, filter.as_ref())
            .await?;
        ctx.progress(0, Some(total)).await?;
        let name = format!("{}-{}.{}", index.name, ctx.task.id, format.extension());
        let key = FileStore::result_key(ctx.task.tenant_id, ctx.task.id, ctx.fence, &name);
        let mut file = ctx.files.writer(&key);
        let written = async {
            let mut encoder = ExportWriter::new(format, index);
            let mut rows = ctx
                .store
                .export_rows(ctx.task.tenant_id, index, filter.as_ref())
                .await?;
            let mut done = 0i64;
            while let Some(batch) = rows.next().await {
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
        Ok(Outcome {
            had_errors: false,
            errors: Map::new(),
            output: Some(
                json!({ "rows": done, "format": format.extension(), "index": index.name }),
            ),
            result: Some(key),
            counts: Some(Counts {
                total: done,
                errors: 0,
                skips: 0,
                success: done,
            }),
        })
    }
}

fn io_failed(e: std::io::Error) -> TaskError {
    TaskError::Retryable(format!("writing the result: {e}"))
}
