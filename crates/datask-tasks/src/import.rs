//! `import`: an uploaded CSV or JSON-lines file bulk-loaded into an index.
//!
//! A blocking thread parses and validates the file and hands batches over a
//! bounded channel (memory stays flat); each batch is committed with its
//! rejects and a checkpoint in one fenced transaction, so a reclaimed import
//! resumes after its last committed batch and ends as if it ran once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datask_core::index::{USERS, Value as Cell};
use datask_core::store::{ImportBatch, ImportRow, RowReject};
use datask_core::task::Counts;
use datask_data::{
    FailedRowsWriter, ImportReader, InputFormat, OpenError, Schema, detect_format, report,
};
use datask_engine::{FileStore, Handler, Invalid, Outcome, TaskContext, TaskError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::target;

/// One fixed hasher for the `atomic` key check, so that a key always
/// hashes the same within a run.
const KEY_HASH: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

/// Rows per committed batch: large enough to amortise the transaction.
const BATCH_ROWS: usize = 10_000;

/// `import` (any index, `target.import_index`), `profile_import`
/// (profiles by the tenant's attribute schema and identifier column, with
/// the first seed's column messages) and `list_import` (the profiles a file
/// identifies become members of `target.list_id`; identifiers that match
/// no profile are rejected rows).
pub struct Import {
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The index named by `target.import_index`.
    Index,
    /// One index, whatever the target says (a sync's).
    Fixed(&'static datask_core::index::IndexDef),
    Profiles,
    List,
}

impl Import {
    pub const fn index() -> Self {
        Import { kind: Kind::Index }
    }

    pub const fn profiles() -> Self {
        Import {
            kind: Kind::Profiles,
        }
    }

    pub const fn list() -> Self {
        Import { kind: Kind::List }
    }

    /// Always into `index`, as the generic import reads it.
    pub(crate) const fn into_index(index: &'static datask_core::index::IndexDef) -> Self {
        Import {
            kind: Kind::Fixed(index),
        }
    }
}

/// How far a load got, in data rows of the file: read in this pass (a
/// check pass reads without writing), and committed to the index.
#[derive(Default)]
struct Reached {
    read: u64,
    written: u64,
}

/// Counts need no place here: rejects are stored with each batch, so the
/// totals are recomputed from them at the end.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Data rows consumed (and committed) so far.
    rows: u64,
    run_tag: i64,
    /// `target.atomic`: the whole file was checked and found clean, so
    /// this pass writes.
    #[serde(default)]
    validated: bool,
    /// The file a sync fetched: a resumed run reads the same copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl Checkpoint {
    /// The checkpoint a task was claimed with, if any.
    pub fn saved(ctx: &TaskContext) -> Result<Option<Self>, TaskError> {
        ctx.task
            .checkpoint
            .as_ref()
            .map(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| TaskError::Fatal(format!("bad checkpoint: {e}")))
            })
            .transpose()
    }
}

/// The file an import reads: an upload, or what a sync fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Source {
    pub object_key: String,
    pub filename: Option<String>,
    pub size: i64,
    /// Where a sync fetched it (without credentials), and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<i64>,
}

/// What the parsing thread sends.
enum Parsed {
    Opened(InputFormat),
    /// Column problems that stop the import: nothing is written.
    Columns(Vec<String>),
    /// Column problems reported while the rest of the file is imported.
    ColumnNotes(Vec<String>),
    Unreadable(String),
    Batch {
        rows: Vec<ImportRow>,
        rejects: Vec<RowReject>,
        rows_read: u64,
        columns: Vec<usize>,
        /// The file's header, for the failed-rows file.
        names: Vec<String>,
        bytes_read: u64,
    },
}

#[async_trait]
impl Handler for Import {
    fn identifier(&self) -> &'static str {
        match self.kind {
            Kind::Index | Kind::Fixed(_) => "import",
            Kind::Profiles => "profile_import",
            Kind::List => "list_import",
        }
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        match self.kind {
            Kind::Profiles => {
                target::only_fields(t, &["action", "upload_id", "dry_run", "atomic"])?
            }
            Kind::List => {
                target::only_fields(t, &["action", "upload_id", "dry_run", "list_id"])?;
                crate::lists::list_id(t)?;
            }
            Kind::Index | Kind::Fixed(_) => {
                target::only_fields(
                    t,
                    &["action", "import_index", "upload_id", "dry_run", "atomic"],
                )?;
                target::index(t, "import_index")?;
            }
        }
        let upload = target::required_string(t, "upload_id")?;
        if upload.is_empty()
            || upload.len() > 64
            || !upload
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Invalid::new(
                "upload_id",
                format!("'{upload}' is not an upload id from POST /uploads"),
            ));
        }
        target::boolean(t, "dry_run")?;
        target::boolean(t, "atomic")?;
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let upload_id = target::required_string(&ctx.task.target, "upload_id")
            .map_err(|e| TaskError::Fatal(e.to_string()))?;
        let upload = ctx
            .store
            .get_upload(ctx.task.tenant_id, upload_id)
            .await?
            .ok_or_else(|| TaskError::Fatal(format!("upload '{upload_id}' no longer exists")))?;
        let source = Source {
            object_key: upload.object_key,
            filename: upload.filename,
            size: upload.size,
            url: None,
            fetched_at: None,
        };
        self.load(ctx, source).await
    }
}

impl Import {
    /// Reads `source` into the index (profiles, list members) by the task's
    /// target: `dry_run`, `atomic`, `import_index`, `list_id`.
    pub(crate) async fn load(
        &self,
        ctx: &TaskContext,
        source: Source,
    ) -> Result<Outcome, TaskError> {
        let mut reached = Reached::default();
        let loaded = self.load_counting(ctx, source, &mut reached).await;
        if let Err(TaskError::Cancelled) = &loaded {
            // Batches commit as they go: say how far the cancelled run got.
            let written = match reached.written {
                0 => "nothing was written".to_string(),
                n => format!("the {n} rows before it were checked and written"),
            };
            let _ = ctx
                .log(format!(
                    "cancelled at row {} of the file; {written}",
                    reached.read.max(reached.written) + 2
                ))
                .await;
        }
        loaded
    }

    /// [`Self::load`], keeping in `reached` how far it got.
    async fn load_counting(
        &self,
        ctx: &TaskContext,
        source: Source,
        reached: &mut Reached,
    ) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let settings = ctx.store.profile_settings(ctx.task.tenant_id).await?;
        let schema = match self.kind {
            Kind::Profiles => Schema::profiles(&settings),
            Kind::List => Schema::identifiers(&settings),
            Kind::Index | Kind::Fixed(_) => {
                let index = match self.kind {
                    Kind::Fixed(index) => index,
                    _ => target::index(t, "import_index")
                        .map_err(|e| TaskError::Fatal(e.to_string()))?,
                };
                if std::ptr::eq(index, &USERS) {
                    Schema::users_index(&settings)
                } else {
                    Schema::index(index)
                }
            }
        };
        let list = match self.kind {
            Kind::List => Some(
                crate::lists::ListTarget::new(t, &settings)
                    .map_err(|e| TaskError::Fatal(e.to_string()))?,
            ),
            _ => None,
        };
        let index = match self.kind {
            Kind::List => &datask_core::index::LIST_MEMBERS,
            _ => schema.index_def(),
        };
        // Profiles identified by email or mobile number are matched to the
        // stored profile holding it.
        let identity = match self.kind {
            Kind::Profiles if settings.identifier_column != "user_id" => USERS
                .column(&settings.identifier_column)
                .map(|(_, c)| c.name),
            _ => None,
        };
        let dry_run = target::boolean(t, "dry_run").unwrap_or(false);
        // All or nothing: a first pass checks the whole file (duplicates
        // across batches too) and writes nothing; only a clean file is
        // read again and written. A dry run of it is that first pass alone,
        // so that it reports what the real run would.
        let atomic = target::boolean(t, "atomic").unwrap_or(false);

        // A saved checkpoint resumes only the file it was saved for (a sync
        // whose copy is gone fetched a new one and starts over).
        let saved = Checkpoint::saved(ctx)?.filter(|cp| {
            cp.source.as_ref().map(|s| s.object_key.as_str())
                == source.url.is_some().then_some(source.object_key.as_str())
        });
        let mut cp = match saved {
            Some(cp) => cp,
            None => {
                ctx.store.clear_rejects(ctx.task.id, ctx.fence).await?;
                Checkpoint {
                    run_tag: ctx.fence,
                    source: source.url.is_some().then(|| source.clone()),
                    ..Default::default()
                }
            }
        };
        if atomic && !cp.validated && cp.rows > 0 {
            // The keys seen by an interrupted check are gone: check again.
            ctx.store.clear_rejects(ctx.task.id, ctx.fence).await?;
            cp.rows = 0;
        }
        // Whether a pass writes: not a dry run, and not an atomic check.
        let writes = |cp: &Checkpoint| !dry_run && (!atomic || cp.validated);
        if writes(&cp) {
            reached.written = cp.rows;
        }
        if cp.rows > 0 {
            ctx.log(format!("resuming after row {} of the file", cp.rows + 1))
                .await?;
        }
        let mut header: Vec<String> = Vec::new();
        let mut column_notes: Vec<String> = Vec::new();
        let mut format = InputFormat::Csv;
        let mut outcome_errors = Map::new();
        let mut refused = false;
        loop {
            let validating = atomic && !cp.validated;
            let pass_dry_run = dry_run || validating;

            let bytes = ctx
                .files
                .read(&source.object_key, None)
                .await
                .map_err(|e| TaskError::Retryable(e.to_string()))?;
            let reader = StreamReader::new(bytes.map(|r| r.map_err(std::io::Error::other)));
            let (tx, mut rx) = mpsc::channel::<Parsed>(1);
            let filename = source.filename.clone();
            let skip = cp.rows;
            let stop = ctx.stopped();
            let pass_schema = schema.clone();
            let parser = tokio::task::spawn_blocking(move || {
                parse_file(
                    SyncIoBridge::new(reader),
                    filename,
                    pass_schema,
                    skip,
                    validating,
                    tx,
                    stop,
                )
            });

            while let Some(msg) = rx.recv().await {
                match msg {
                    Parsed::Opened(f) => format = f,
                    Parsed::Columns(problems) => {
                        outcome_errors.insert("file[columns]".into(), json!(problems));
                    }
                    Parsed::ColumnNotes(problems) => column_notes = problems,
                    Parsed::Unreadable(problem) => {
                        outcome_errors.insert("file".into(), json!([problem]));
                    }
                    Parsed::Batch {
                        rows,
                        rejects,
                        rows_read,
                        columns,
                        names,
                        bytes_read,
                    } => {
                        ctx.checkpoint()?;
                        header = names;
                        let (columns, rows, rejects) = match (&list, identity) {
                            (Some(list), _) => list.members(ctx, &columns, rows, rejects).await?,
                            (None, Some(column)) => {
                                let (rows, rejects) =
                                    match_profiles(ctx, column, &columns, rows, rejects).await?;
                                (columns, rows, rejects)
                            }
                            (None, None) => (columns, rows, rejects),
                        };
                        let (columns, rows) = fill_kept(index, columns, rows);
                        let next = Checkpoint {
                            rows: rows_read,
                            run_tag: cp.run_tag,
                            validated: cp.validated,
                            source: cp.source.clone(),
                        };
                        ctx.store
                            .import_batch(ImportBatch {
                                tenant_id: ctx.task.tenant_id,
                                task_id: ctx.task.id,
                                fence: ctx.fence,
                                index,
                                columns,
                                rows,
                                rejects,
                                run_tag: cp.run_tag,
                                dry_run: pass_dry_run,
                                checkpoint: serde_json::to_value(&next).expect("a plain struct"),
                                progress_done: rows_read as i64,
                            })
                            .await?;
                        cp = next;
                        reached.read = cp.rows;
                        if writes(&cp) {
                            reached.written = cp.rows;
                        }
                        // Estimate the total from the share of bytes read so far.
                        let total = (bytes_read > 0).then(|| {
                            (rows_read as f64 * source.size as f64 / bytes_read as f64) as i64
                        });
                        ctx.progress(rows_read as i64, total).await?;
                    }
                }
            }
            match parser.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(TaskError::Retryable(format!("reading the upload: {e}"))),
                Err(e) => return Err(TaskError::Retryable(format!("the parser stopped: {e}"))),
            }
            ctx.checkpoint()?;
            if !validating || !outcome_errors.is_empty() {
                break;
            }
            if !column_notes.is_empty() || !ctx.store.reject_summary(ctx.task.id).await?.is_empty()
            {
                refused = true;
                ctx.log("the file has problems: nothing was written (atomic)")
                    .await?;
                break;
            }
            if dry_run {
                ctx.log("the whole file is valid; nothing written (dry run)")
                    .await?;
                break;
            }
            ctx.log("the whole file is valid; writing it").await?;
            ctx.store.clear_rejects(ctx.task.id, ctx.fence).await?;
            cp = Checkpoint {
                rows: 0,
                run_tag: cp.run_tag,
                validated: true,
                source: cp.source.take(),
            };
        }
        if !outcome_errors.is_empty() {
            // The file could not be read (on): what the batches before the
            // problem committed stays, and the outcome says so.
            let written = if writes(&cp) { cp.rows as i64 } else { 0 };
            if written > 0
                && let Some(Value::Array(problems)) = outcome_errors.get_mut("file")
            {
                problems.push(json!(format!(
                    "the {written} rows before the problem were read and committed"
                )));
            }
            return Ok(Outcome {
                had_errors: true,
                errors: outcome_errors,
                output: source
                    .url
                    .as_ref()
                    .map(|u| json!({ "rows": written, "applied": written, "source": u })),
                counts: Some(Counts {
                    total: written,
                    success: written,
                    ..Counts::default()
                }),
                ..Default::default()
            });
        }

        if !column_notes.is_empty() {
            outcome_errors.insert("file[columns]".into(), json!(column_notes));
        }
        let groups = ctx.store.reject_summary(ctx.task.id).await?;
        let mut result = None;
        if !groups.is_empty() {
            // Groups are kept by (code, column); two whose messages read the
            // same (an empty key in either column of a two-column key) are
            // reported as one, as the reader sees one problem.
            let mut merged: Vec<(String, i64, Vec<i64>)> = Vec::new();
            for g in &groups {
                let message = report::row_message(&g.code, g.column.as_deref());
                match merged.iter_mut().find(|(m, _, _)| *m == message) {
                    Some((_, count, rows)) => {
                        *count += g.count;
                        rows.extend(&g.first_rows);
                        rows.sort_unstable();
                        rows.dedup();
                    }
                    None => merged.push((message, g.count, g.first_rows.clone())),
                }
            }
            let lines: Vec<String> = merged
                .iter()
                .map(|(message, count, rows)| report::format_group(message, *count, rows))
                .collect();
            outcome_errors.insert("file[rows]".into(), json!(lines));
            result = Some(write_failed_rows(ctx, format, &header).await?);
        }
        let total = cp.rows as i64;
        let rejected: i64 = groups.iter().map(|g| g.count).sum();
        let applied = if refused { 0 } else { total - rejected };
        ctx.progress(total, Some(total)).await?;
        Ok(Outcome {
            had_errors: !groups.is_empty() || !column_notes.is_empty(),
            errors: outcome_errors,
            output: Some(match &list {
                Some(l) => {
                    json!({ "rows": total, "applied": applied, "rejected": rejected, "dry_run": dry_run, "atomic": atomic, "list_id": l.list_id })
                }
                None => {
                    json!({ "rows": total, "applied": applied, "rejected": rejected, "dry_run": dry_run, "atomic": atomic, "index": index.name })
                }
            }),
            result,
            counts: Some(Counts {
                total,
                errors: rejected,
                skips: if refused { total - rejected } else { 0 },
                success: applied,
            }),
        })
    }
}

/// Columns written once (a profile's `created_at`) that a row leaves
/// empty get the time of this batch: a profile made by an import was created
/// then, and the store keeps whatever value a row already holds.
fn fill_kept(
    index: &'static datask_core::index::IndexDef,
    mut columns: Vec<usize>,
    mut rows: Vec<ImportRow>,
) -> (Vec<usize>, Vec<ImportRow>) {
    let now = jiff::Timestamp::now().as_microsecond();
    for (at, _) in index.columns.iter().enumerate().filter(|(_, c)| c.kept) {
        match columns.iter().position(|&c| c == at) {
            Some(pos) => {
                for row in &mut rows {
                    if matches!(row.values[pos], Cell::Null) {
                        row.values[pos] = Cell::Time(now);
                    }
                }
            }
            None => {
                columns.push(at);
                for row in &mut rows {
                    row.values.push(Cell::Time(now));
                }
            }
        }
    }
    (columns, rows)
}

/// For tenants that identify profiles by `column` (email or mobile number):
/// a row whose identifier an existing profile holds updates that profile
/// (its `user_id` wins over the file's); two rows of a batch that land on
/// one profile make the later a duplicate. A row is rejected, not guessed,
/// when its identifier is held by several profiles, or when it is new and
/// the `user_id` it would get (its identifier, when the file gives none)
/// is another profile's: writing it would edit someone else.
async fn match_profiles(
    ctx: &TaskContext,
    column: &'static str,
    columns: &[usize],
    rows: Vec<ImportRow>,
    mut rejects: Vec<RowReject>,
) -> Result<(Vec<ImportRow>, Vec<RowReject>), TaskError> {
    let (at, _) = USERS.column(column).expect("a profile column");
    let (Some(id_pos), Some(key_pos)) = (
        columns.iter().position(|&c| c == at),
        columns.iter().position(|&c| c == 0),
    ) else {
        return Ok((rows, rejects));
    };
    use crate::lists::text_at as text;
    let found = crate::lists::profiles_by(ctx, column, &rows, id_pos).await?;
    // New identifiers whose user_id would be the identifier itself.
    let derived: Vec<String> = rows
        .iter()
        .filter(|r| !found.contains_key(&text(r, id_pos)) && text(r, key_pos) == text(r, id_pos))
        .map(|r| text(r, key_pos))
        .collect();
    let taken: HashSet<String> = if derived.is_empty() {
        HashSet::new()
    } else {
        ctx.store
            .lookup_profiles(ctx.task.tenant_id, "user_id", derived)
            .await?
            .into_iter()
            .map(|(user_id, _)| user_id)
            .collect()
    };
    let mut seen = HashSet::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    for mut row in rows {
        let value = text(&row, id_pos);
        let problem = match found.get(&value).map(Vec::as_slice) {
            // The row names which of the sharing profiles it means.
            Some(ids @ [_, _, ..]) if ids.contains(&text(&row, key_pos)) => None,
            Some(ids @ [_, _, ..]) => Some(crate::lists::ambiguous_profile(
                column,
                &value,
                ids,
                row.raw.clone(),
                row.row,
            )),
            Some([user_id, ..]) => {
                row.values[key_pos] = Cell::Text(user_id.clone());
                None
            }
            _ if text(&row, key_pos) == value && taken.contains(&value) => Some(RowReject {
                row: row.row,
                code: "identifier_taken".into(),
                column: Some(column.into()),
                message: format!(
                    "No profile has {column} '{value}', and the user_id a new profile would get, '{value}', is another profile's: give the row a user_id"
                ),
                raw: row.raw.clone(),
            }),
            _ => None,
        };
        if let Some(reject) = problem {
            rejects.push(reject);
        } else if seen.insert(text(&row, key_pos)) {
            kept.push(row);
        } else {
            rejects.push(RowReject {
                row: row.row,
                code: "duplicate".into(),
                column: None,
                message: "duplicate key".into(),
                raw: row.raw,
            });
        }
    }
    rejects.sort_by_key(|r| r.row);
    Ok((kept, rejects))
}

/// Streams every rejected row, in input order, to `failed-rows-<task>.csv`.
async fn write_failed_rows(
    ctx: &TaskContext,
    format: InputFormat,
    header: &[String],
) -> Result<String, TaskError> {
    let name = format!("failed-rows-{}.csv", ctx.task.id);
    let key = FileStore::result_key(ctx.task.tenant_id, ctx.task.id, ctx.fence, &name);
    let mut file = ctx.files.writer(&key);
    let mut out = FailedRowsWriter::new(format, header);
    let mut after = 0i64;
    let written = async {
        loop {
            let page = ctx.store.rejects(ctx.task.id, after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.row;
            for r in &page {
                out.write(r.row, &r.code, &r.message, &r.raw);
            }
            file.write_all(&out.take_chunk()).await.map_err(io_failed)?;
        }
        file.write_all(&out.finish()).await.map_err(io_failed)?;
        file.shutdown().await.map_err(io_failed)?;
        Ok::<(), TaskError>(())
    }
    .await;
    if let Err(e) = written {
        let _ = file.abort().await;
        return Err(e);
    }
    Ok(key)
}

fn io_failed(e: std::io::Error) -> TaskError {
    TaskError::Retryable(format!("writing the failed-rows file: {e}"))
}

/// Counts the bytes the parser has consumed, for progress estimates.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The parsing thread: validates rows and sends them in batches.
fn parse_file<R: std::io::Read>(
    source: R,
    filename: Option<String>,
    schema: Schema,
    skip: u64,
    whole_file_keys: bool,
    tx: mpsc::Sender<Parsed>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let read = Arc::new(AtomicU64::new(0));
    let mut buffered = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: source,
            read: read.clone(),
        },
    );
    let format = detect_format(buffered.fill_buf()?, filename.as_deref());
    let index = schema.index_def();
    let mut reader = match ImportReader::open_with(buffered, format, schema) {
        Ok(r) => r,
        Err(OpenError::Columns(problems)) => {
            let _ = tx.blocking_send(Parsed::Columns(
                problems.into_iter().map(|p| p.message).collect(),
            ));
            return Ok(());
        }
        Err(OpenError::File(e)) => {
            let _ = tx.blocking_send(Parsed::Unreadable(e.to_string()));
            return Ok(());
        }
    };
    let _ = tx.blocking_send(Parsed::Opened(reader.format()));
    if !reader.column_problems().is_empty() {
        let notes = reader
            .column_problems()
            .iter()
            .map(|p| p.message.clone())
            .collect();
        let _ = tx.blocking_send(Parsed::ColumnNotes(notes));
    }
    let columns = reader.columns().to_vec();
    let names = reader.column_names();
    let key_at: Vec<usize> = (0..index.key_len)
        .filter_map(|k| columns.iter().position(|&c| c == k))
        .collect();
    // A file that cannot be read further is the file's problem (ERROR,
    // under `file`), unless reading itself failed (retried).
    let unreadable = |e: datask_data::FileError| match e {
        datask_data::FileError::Io { source, .. } => Err(source),
        other => Ok(other.to_string()),
    };
    let mut rows_read = match reader.skip_rows(skip) {
        Ok(n) => n,
        Err(e) => {
            let _ = tx.blocking_send(Parsed::Unreadable(unreadable(e)?));
            return Ok(());
        }
    };
    // `atomic` checks: duplicates across the whole file, by a 64-bit hash
    // of the key (a hash set: 10 to 18 bytes a row while checking).
    let mut seen: HashSet<u64> = HashSet::new();
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(BATCH_ROWS);
        let mut rejects = Vec::new();
        let mut keys: HashSet<String> = HashSet::with_capacity(BATCH_ROWS);
        let mut ended = false;
        let mut stopped_by: Option<String> = None;
        while rows.len() + rejects.len() < BATCH_ROWS {
            let Some(next) = reader.next_row() else {
                ended = true;
                break;
            };
            let parsed = match next {
                Ok(p) => p,
                Err(e) => {
                    stopped_by = Some(unreadable(e)?);
                    ended = true;
                    break;
                }
            };
            rows_read += 1;
            match parsed.outcome {
                Ok(values) => {
                    let key = key_at
                        .iter()
                        .map(|&p| match &values[p] {
                            Cell::Text(k) => k.clone(),
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("\u{1f}");
                    let fresh = if whole_file_keys {
                        use std::hash::BuildHasher;
                        seen.insert(KEY_HASH.hash_one(&key))
                    } else {
                        keys.insert(key)
                    };
                    if fresh {
                        rows.push(ImportRow {
                            row: parsed.row,
                            values,
                            raw: parsed.raw,
                        });
                    } else {
                        rejects.push(RowReject {
                            row: parsed.row,
                            code: "duplicate".into(),
                            column: None,
                            message: "duplicate key".into(),
                            raw: parsed.raw,
                        });
                    }
                }
                Err(p) => rejects.push(RowReject {
                    row: parsed.row,
                    code: p.code.to_string(),
                    column: p.column,
                    message: p.message,
                    raw: parsed.raw,
                }),
            }
        }
        if !rows.is_empty() || !rejects.is_empty() || ended {
            let bytes_read = read.load(Ordering::Relaxed);
            let batch = Parsed::Batch {
                rows,
                rejects,
                rows_read,
                columns: columns.clone(),
                names: names.clone(),
                bytes_read,
            };
            if tx.blocking_send(batch).is_err() {
                return Ok(()); // the task stopped listening
            }
        }
        if ended {
            if let Some(problem) = stopped_by {
                let _ = tx.blocking_send(Parsed::Unreadable(problem));
            }
            return Ok(());
        }
    }
}
