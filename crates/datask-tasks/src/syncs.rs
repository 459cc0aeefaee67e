//! Integration syncs: `active_directory_profiles_sync`,
//! `active_directory_lists_sync` and `kochava_sync_installs` pull a file
//! from the endpoint the tenant configured (`PUT /settings`,
//! `integrations.<name>`) and load it through the import pipeline, with its
//! row-level report, failed-rows file, dry runs and resumption.
//!
//! The answer is first copied whole into the file store and the copy is
//! named in the checkpoint, so that a reclaimed run resumes the same
//! snapshot instead of fetching one that may have changed. Connection
//! failures and 5xx answers are retried with the task's backoff; a 4xx
//! answer or a missing configuration ends the run in ERROR naming it.

use std::time::Duration;

use async_trait::async_trait;
use datask_core::index::{INSTALLS, LIST_MEMBERS};
use datask_core::segment::{Bound, Field, Filter};
use datask_core::settings::Endpoint;
use datask_engine::{FileStore, Handler, Invalid, Outcome, TaskContext, TaskError};
use futures::StreamExt;
use jiff::Timestamp;
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::audience::input_error;
use crate::import::{Checkpoint, Import, Source};
use crate::target;

/// An endpoint's answer larger than this is refused (as an upload is).
const MAX_SOURCE_BYTES: u64 = 4 << 30;

pub struct Sync {
    kind: SyncKind,
    client: reqwest::Client,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    AdProfiles,
    AdLists,
    KochavaInstalls,
}

impl Sync {
    fn new(kind: SyncKind) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // An endpoint that stops sending is a failed attempt, retried.
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("datask/", env!("CARGO_PKG_VERSION")))
            // A redirect elsewhere learns nothing of where it came from.
            .referer(false)
            .build()
            .expect("a client with default TLS settings");
        Sync { kind, client }
    }

    pub fn active_directory_profiles() -> Self {
        Self::new(SyncKind::AdProfiles)
    }

    pub fn active_directory_lists() -> Self {
        Self::new(SyncKind::AdLists)
    }

    pub fn kochava_installs() -> Self {
        Self::new(SyncKind::KochavaInstalls)
    }

    fn integration(&self) -> &'static str {
        match self.kind {
            SyncKind::AdProfiles | SyncKind::AdLists => "active_directory",
            SyncKind::KochavaInstalls => "kochava",
        }
    }

    fn loader(&self) -> Import {
        match self.kind {
            SyncKind::AdProfiles => Import::profiles(),
            SyncKind::AdLists => Import::list(),
            SyncKind::KochavaInstalls => Import::into_index(&INSTALLS),
        }
    }

    /// The path under the endpoint's base URL this sync reads.
    fn path(&self, t: &Map<String, Value>) -> Result<Vec<String>, Invalid> {
        Ok(match self.kind {
            SyncKind::AdProfiles => vec!["profiles".into()],
            SyncKind::AdLists => {
                let group = match group(t)? {
                    Some(g) => g,
                    None => crate::lists::list_id(t)?,
                };
                vec!["groups".into(), group.into(), "members".into()]
            }
            SyncKind::KochavaInstalls => vec!["installs".into()],
        })
    }
}

/// `target.group` (lists sync): the directory group, 1 to 200 characters.
fn group(t: &Map<String, Value>) -> Result<Option<&str>, Invalid> {
    let g = target::string(t, "group")?;
    if let Some(g) = g {
        if g.trim().is_empty() {
            return Err(Invalid::new("group", "must not be blank"));
        }
        if g.chars().count() > 200 {
            return Err(Invalid::new("group", "must be at most 200 characters"));
        }
    }
    Ok(g)
}

/// The group a lists sync reads names one path segment: `.` and `..`
/// cannot be one (a URL resolves them away, even encoded) and control
/// characters are dropped by URL parsing, so either would fetch another
/// resource than the one named.
fn check_group_segment(t: &Map<String, Value>) -> Result<(), Invalid> {
    let (field, g) = match group(t)? {
        Some(g) => ("group", g),
        None => ("list_id", crate::lists::list_id(t)?),
    };
    if matches!(g, "." | "..") {
        return Err(Invalid::new(
            field,
            format!("'{g}' cannot name a directory group (it is not a path segment)"),
        ));
    }
    if g.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must not hold control characters (it names a directory group)",
        ));
    }
    Ok(())
}

/// Checks an endpoint's base URL as `PUT /settings` takes it: absolute
/// http(s) with a host, no credentials inside it (they go in `token`).
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    if url.len() > 2000 {
        return Err("must be at most 2000 characters".into());
    }
    let parsed = Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("'{url}' must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{url}' has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold credentials; give them as `token`".into());
    }
    if parsed.fragment().is_some() {
        return Err(format!("'{url}' must not have a #fragment"));
    }
    Ok(())
}

/// Whether two endpoint URLs send to the same place (scheme, host, port):
/// a kept token may follow a new path, never a new host.
pub fn same_origin(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// Why a fetch gave no file: the run ends in ERROR with this, under `key`.
struct Refused {
    key: String,
    message: String,
}

#[async_trait]
impl Handler for Sync {
    fn identifier(&self) -> &'static str {
        match self.kind {
            SyncKind::AdProfiles => "active_directory_profiles_sync",
            SyncKind::AdLists => "active_directory_lists_sync",
            SyncKind::KochavaInstalls => "kochava_sync_installs",
        }
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        match self.kind {
            SyncKind::AdProfiles => target::only_fields(t, &["action", "dry_run", "atomic"])?,
            SyncKind::AdLists => {
                target::only_fields(t, &["action", "list_id", "group", "dry_run"])?;
                crate::lists::list_id(t)?;
                check_group_segment(t)?;
            }
            SyncKind::KochavaInstalls => target::only_fields(t, &["action", "dry_run", "atomic"])?,
        }
        target::boolean(t, "dry_run")?;
        target::boolean(t, "atomic")?;
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        // Two syncs of one list at once would each remove the other's
        // members: in this process they take turns (see README for nodes).
        let _turn = match self.kind {
            SyncKind::AdLists => {
                let list = crate::lists::list_id(&ctx.task.target)
                    .map_err(|e| TaskError::Fatal(e.to_string()))?;
                let lock = list_lock(ctx.task.tenant_id, list);
                let stopped = ctx.stopped();
                let turn = tokio::select! {
                    guard = lock.lock_owned() => guard,
                    _ = stopped.cancelled() => {
                        return Err(ctx.checkpoint().err().unwrap_or(TaskError::Cancelled));
                    }
                };
                Some(turn)
            }
            _ => None,
        };
        let saved = Checkpoint::saved(ctx)?.and_then(|cp| cp.source);
        let source = match saved {
            Some(s) if ctx.files.size(&s.object_key).await.is_ok() => {
                ctx.log(format!(
                    "resuming the copy of {} fetched earlier",
                    s.url.as_deref().unwrap_or("the endpoint")
                ))
                .await?;
                s
            }
            _ => match self.fetch(ctx).await? {
                Ok(s) => s,
                Err(r) => return Ok(input_error(&r.key, r.message)),
            },
        };
        let result = self.load(ctx, &source).await;
        if self.keeps_copy(ctx, &source, &result).await {
            return result;
        }
        if let Err(e) = ctx.files.delete(&source.object_key).await {
            tracing::warn!(task = ctx.task.id, error = %e, "could not delete a sync's copy");
        }
        result
    }
}

/// One lock per (tenant, list) that a lists sync holds while it runs.
fn list_lock(tenant: i64, list: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    type Locks = Mutex<HashMap<(i64, String), Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: LazyLock<Locks> = LazyLock::new(Locks::default);
    let mut locks = LOCKS.lock().expect("not poisoned");
    // Forget the locks nobody holds or waits for, so the map stays small.
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks.entry((tenant, list.to_string())).or_default().clone()
}

impl Sync {
    /// Loads the copy and, for a lists sync, removes the members it no
    /// longer holds.
    async fn load(&self, ctx: &TaskContext, source: &Source) -> Result<Outcome, TaskError> {
        let mut outcome = self.loader().load(ctx, source.clone()).await?;
        let dry_run = target::boolean(&ctx.task.target, "dry_run").unwrap_or(false);
        let readable =
            !outcome.errors.contains_key("file") && !outcome.errors.contains_key("file[columns]");
        if self.kind == SyncKind::AdLists && readable && !dry_run {
            let removed = self.remove_departed(ctx, source).await?;
            if let Some(Value::Object(o)) = &mut outcome.output {
                o.insert("removed".into(), json!(removed));
            }
        }
        if let Some(Value::Object(o)) = &mut outcome.output {
            o.insert("source".into(), json!(source.url));
        }
        Ok(outcome)
    }

    /// Whether a run that ended so leaves its copy for the run that will
    /// resume it: only when it was interrupted (a retry to come, a release
    /// at shutdown, another worker now owning the task) and a checkpoint
    /// names the copy. Otherwise the copy has served, or nothing resumes it.
    async fn keeps_copy(
        &self,
        ctx: &TaskContext,
        source: &Source,
        result: &Result<Outcome, TaskError>,
    ) -> bool {
        match result {
            Ok(_) | Err(TaskError::Fatal(_)) => false,
            Err(TaskError::LeaseLost) => true,
            Err(TaskError::Retryable(_)) if ctx.task.attempts >= ctx.task.max_attempts => false,
            Err(TaskError::Retryable(_) | TaskError::Cancelled) => {
                match ctx.store.get_task(ctx.task.tenant_id, ctx.task.id).await {
                    Ok(Some(now)) => {
                        let named = now
                            .checkpoint
                            .and_then(|v| serde_json::from_value::<Checkpoint>(v).ok())
                            .and_then(|cp| cp.source)
                            .is_some_and(|s| s.object_key == source.object_key);
                        named && !now.cancel_requested
                    }
                    // Unsure: keep it (the task's deletion removes it).
                    _ => true,
                }
            }
        }
    }

    /// Copies the endpoint's answer into the file store.
    async fn fetch(&self, ctx: &TaskContext) -> Result<Result<Source, Refused>, TaskError> {
        let name = self.integration();
        let settings = ctx.store.profile_settings(ctx.task.tenant_id).await?;
        let Some(endpoint) = settings.integrations.get(name).cloned() else {
            return Ok(Err(Refused {
                key: format!("integrations.{name}"),
                message: format!(
                    "the {name} integration is not configured: PUT /settings with integrations.{name}.url"
                ),
            }));
        };
        let path = self
            .path(&ctx.task.target)
            .map_err(|e| TaskError::Fatal(e.to_string()))?;
        let url = match endpoint_url(&endpoint, &path) {
            Ok(u) => u,
            Err(message) => {
                return Ok(Err(Refused {
                    key: format!("integrations.{name}.url"),
                    message,
                }));
            }
        };
        let shown = url.to_string();
        ctx.log(format!("fetching {shown}")).await?;
        let fetched_at = Timestamp::now().as_microsecond();
        let mut request = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "text/csv, application/x-ndjson");
        if let Some(token) = &endpoint.token {
            request = request.bearer_auth(token);
        }
        let unreachable =
            |e: reqwest::Error| TaskError::Retryable(format!("GET {shown}: {}", error_chain(&e)));
        let stopped = ctx.stopped();
        let response = tokio::select! {
            r = request.send() => match r {
                // A redirect loop, or one to a scheme other than http(s),
                // fails the same way every time: the configuration's problem.
                Err(e) if e.is_redirect() => {
                    return Ok(Err(Refused {
                        key: "source".into(),
                        message: format!("GET {shown}: {}", error_chain(&e)),
                    }));
                }
                r => r.map_err(unreachable)?,
            },
            _ = stopped.cancelled() => {
                return Err(ctx.checkpoint().err().unwrap_or(TaskError::Cancelled));
            }
        };
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(TaskError::Retryable(format!(
                "GET {shown} answered {status}"
            )));
        }
        if !status.is_success() {
            return Ok(Err(Refused {
                key: "source".into(),
                message: format!("GET {shown} answered {status}"),
            }));
        }
        let filename = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| {
                let essence = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                match essence.as_str() {
                    "text/csv" => Some("source.csv"),
                    "application/x-ndjson" | "application/jsonl" | "application/json" => {
                        Some("source.jsonl")
                    }
                    _ => None,
                }
            });
        if response
            .content_length()
            .is_some_and(|n| n > MAX_SOURCE_BYTES)
        {
            return Ok(Err(too_large(&shown)));
        }
        let key = FileStore::result_key(
            ctx.task.tenant_id,
            ctx.task.id,
            ctx.fence,
            filename.unwrap_or("source"),
        );
        let mut file = ctx.files.writer(&key);
        let mut body = response.bytes_stream();
        let mut size: u64 = 0;
        // A JSON array (`[{…}, {…}]`, what many APIs answer) is copied as
        // JSON lines, one element a line; decided by the first byte.
        let mut array: Option<ArrayToLines> = None;
        let mut decided = false;
        let mut lines = Vec::new();
        let copied: Result<Result<(), Refused>, TaskError> = async {
            while let Some(chunk) = body.next().await {
                ctx.checkpoint()?;
                let chunk = chunk.map_err(unreachable)?;
                size += chunk.len() as u64;
                if size > MAX_SOURCE_BYTES {
                    return Ok(Err(too_large(&shown)));
                }
                if !decided && let Some(first) = chunk.iter().find(|b| !b.is_ascii_whitespace()) {
                    decided = true;
                    if *first == b'[' && filename != Some("source.csv") {
                        array = Some(ArrayToLines::default());
                    }
                }
                match &mut array {
                    Some(a) => {
                        lines.clear();
                        if let Err(why) = a.feed(&chunk, &mut lines) {
                            return Ok(Err(not_an_array(&shown, why)));
                        }
                        file.write_all(&lines).await.map_err(copy_failed)?;
                    }
                    None => file.write_all(&chunk).await.map_err(copy_failed)?,
                }
            }
            if let Some(a) = &array
                && let Err(why) = a.finish()
            {
                return Ok(Err(not_an_array(&shown, why)));
            }
            file.shutdown().await.map_err(copy_failed)?;
            Ok(Ok(()))
        }
        .await;
        let filename = if array.is_some() {
            Some("source.jsonl")
        } else {
            filename
        };
        match copied {
            Ok(Ok(())) => {}
            other => {
                let _ = file.abort().await;
                return other.map(|r| Err(r.expect_err("an unfinished copy")));
            }
        }
        ctx.log(format!("fetched {size} bytes")).await?;
        Ok(Ok(Source {
            object_key: key,
            filename: filename.map(str::to_string),
            size: size as i64,
            url: Some(shown),
            fetched_at: Some(fetched_at),
        }))
    }

    /// A list sync mirrors the group: members this run did not write (their
    /// `added_at` is older than the fetch) have left it.
    async fn remove_departed(&self, ctx: &TaskContext, source: &Source) -> Result<i64, TaskError> {
        let list =
            crate::lists::list_id(&ctx.task.target).map_err(|e| TaskError::Fatal(e.to_string()))?;
        let Some(fetched_at) = source.fetched_at else {
            return Ok(0);
        };
        ctx.checkpoint()?;
        let departed = Filter::All(vec![
            Filter::Compare {
                column: Field::Column("list_id"),
                op: "=",
                value: Bound::Text(list.to_string()),
            },
            Filter::Compare {
                column: Field::Column("added_at"),
                op: "<",
                value: Bound::Time(fetched_at),
            },
        ]);
        let removed = ctx
            .store
            .delete_rows(ctx.task.tenant_id, &LIST_MEMBERS, &departed)
            .await?;
        if removed > 0 {
            ctx.log(format!("removed {removed} members no longer in the group"))
                .await?;
        }
        Ok(removed)
    }
}

/// The base URL with the sync's path segments appended (each encoded).
fn endpoint_url(endpoint: &Endpoint, path: &[String]) -> Result<Url, String> {
    check_endpoint_url(&endpoint.url)?;
    let mut url = Url::parse(&endpoint.url).map_err(|e| e.to_string())?;
    url.path_segments_mut()
        .map_err(|()| format!("'{}' cannot take a path", endpoint.url))?
        .pop_if_empty()
        .extend(path);
    Ok(url)
}

fn not_an_array(url: &str, why: &'static str) -> Refused {
    Refused {
        key: "source".into(),
        message: format!("GET {url} answered a JSON array that {why}"),
    }
}

/// Turns a JSON array, fed in pieces, into JSON lines: each top-level
/// element on a line of its own, line breaks between tokens dropped (JSON
/// strings cannot hold a raw one). Elements are not parsed here; the import
/// reads each line and reports the bad ones by row.
#[derive(Default)]
struct ArrayToLines {
    /// Brackets and braces open, the array's own included.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The array has closed; only whitespace may follow.
    closed: bool,
    /// Bytes written on the current line.
    line_open: bool,
}

impl ArrayToLines {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        for &b in chunk {
            if self.closed {
                if !b.is_ascii_whitespace() {
                    return Err("has more after its closing bracket");
                }
                continue;
            }
            if self.in_string {
                out.push(b);
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'[' | b'{' if self.depth == 0 => {
                    if b == b'{' {
                        return Err("does not start with [");
                    }
                    self.depth = 1;
                }
                b'[' | b'{' => {
                    self.depth += 1;
                    out.push(b);
                    self.line_open = true;
                }
                b']' | b'}' if self.depth == 1 => {
                    if b == b'}' {
                        return Err("has an unmatched }");
                    }
                    self.depth = 0;
                    self.closed = true;
                    if self.line_open {
                        out.push(b'\n');
                        self.line_open = false;
                    }
                }
                b']' | b'}' => {
                    self.depth -= 1;
                    out.push(b);
                }
                b',' if self.depth == 1 => {
                    if self.line_open {
                        out.push(b'\n');
                        self.line_open = false;
                    }
                }
                b'\n' | b'\r' | b' ' | b'\t' => {
                    // Inside an element a space keeps tokens apart.
                    if self.depth > 1 {
                        out.push(b' ');
                    }
                }
                _ if self.depth == 0 => return Err("does not start with ["),
                b'"' => {
                    self.in_string = true;
                    out.push(b);
                    self.line_open = true;
                }
                _ => {
                    out.push(b);
                    self.line_open = true;
                }
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), &'static str> {
        if self.closed {
            Ok(())
        } else {
            Err("is cut off before its closing bracket")
        }
    }
}

fn too_large(url: &str) -> Refused {
    Refused {
        key: "source".into(),
        message: format!(
            "GET {url} answered more than {} GiB",
            MAX_SOURCE_BYTES >> 30
        ),
    }
}

fn copy_failed(e: std::io::Error) -> TaskError {
    TaskError::Retryable(format!("copying the endpoint's answer: {e}"))
}

/// reqwest's message and its causes ("error sending request: connection
/// refused"), which its Display alone leaves out.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::ArrayToLines;

    fn lines(pieces: &[&str]) -> Result<String, &'static str> {
        let mut a = ArrayToLines::default();
        let mut out = Vec::new();
        for p in pieces {
            a.feed(p.as_bytes(), &mut out)?;
        }
        a.finish()?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn arrays_become_lines_in_any_pieces() {
        let text = "[\n  {\"user_id\": \"u1\",\n   \"tags\": [1, 2], \"s\": \"a, ]}\\\" b\"},\n  {\"user_id\":\"u2\"}\n]\n";
        let want = "{\"user_id\": \"u1\",    \"tags\": [1, 2], \"s\": \"a, ]}\\\" b\"}\n{\"user_id\":\"u2\"}\n";
        assert_eq!(lines(&[text]).unwrap(), want);
        // Cut anywhere, even inside a string or an escape.
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(lines(&[a, b]).unwrap(), want, "cut at {cut}");
        }
        assert_eq!(lines(&["[]"]).unwrap(), "");
        assert_eq!(lines(&["[", "1,2", "]"]).unwrap(), "1\n2\n");
    }

    #[test]
    fn what_is_not_an_array_is_named() {
        assert_eq!(
            lines(&["[{\"a\":1}"]),
            Err("is cut off before its closing bracket")
        );
        assert_eq!(lines(&["[1] 2"]), Err("has more after its closing bracket"));
        assert_eq!(lines(&["[1}"]), Err("has an unmatched }"));
    }
}
