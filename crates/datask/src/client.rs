//! `datask task …`: a client of the REST API (DATASK_URL, DATASK_TOKEN).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Args)]
pub struct ClientArgs {
    /// The server.
    #[arg(
        long,
        env = "DATASK_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// A privileged key (or app token, to read).
    #[arg(long, env = "DATASK_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Create a task: an export, an import of a local file, or any target as JSON.
    Create(Box<CreateArgs>),
    /// List tasks, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        identifier: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The next page: the cursor the previous one ended with.
        #[arg(long)]
        cursor: Option<String>,
        /// The page as the API answers it (JSON), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one task as JSON.
    Get { id: i64 },
    /// Follow a task with a progress bar until it finishes (a repeating task: until a run ends); exits 0 only for DONE.
    Wait { id: i64 },
    /// Download a task's result file.
    Download {
        id: i64,
        /// Where to write it (default: the result's name).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run a task now.
    Execute { id: i64 },
    /// Cancel a task.
    Cancel { id: i64 },
    /// Delete a task.
    Delete { id: i64 },
}

#[derive(Args)]
struct CreateArgs {
    /// Export this index (users, transactions, vouchers, wallet-ledger, products, product-variants).
    #[arg(long, conflicts_with_all = ["import", "target"])]
    export: Option<String>,
    /// csv, json or jsonl.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Import --file into this index.
    #[arg(long, requires = "file", conflicts_with = "target")]
    import: Option<String>,
    /// The CSV or JSON-lines file to import (uploaded first, with a progress
    /// bar); without --import it becomes target.upload_id (profile_import,
    /// list_import with --identifier).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Validate only.
    #[arg(long)]
    dry_run: bool,
    /// Any target, as JSON.
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    identifier: Option<String>,
    #[arg(long, default_value = "")]
    desc: String,
    /// ISO 8601 start time.
    #[arg(long)]
    once: Option<String>,
    /// daily, weekly or monthly.
    #[arg(long)]
    repeat: Option<String>,
    #[arg(long)]
    timezone: Option<String>,
    /// trigger.segment: a filter, as JSON.
    #[arg(long, conflicts_with = "segment_id")]
    segment: Option<String>,
    /// trigger.segment_id: a saved segment.
    #[arg(long)]
    segment_id: Option<String>,
}

struct Client {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching {}", self.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or(&text);
            bail!("{status}: {msg}");
        }
        Ok(body)
    }

    fn at(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
    }
}

fn bar(len: Option<u64>, template: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub async fn run(args: ClientArgs) -> anyhow::Result<i32> {
    // An empty value (`DATASK_TOKEN=` in a script) is no token at all.
    let token = args
        .token
        .filter(|t| !t.trim().is_empty())
        .context("set DATASK_TOKEN (or --token) to a key of your tenant")?;
    let c = Client {
        url: args.url,
        token,
        http: reqwest::Client::new(),
    };
    use reqwest::Method;
    match args.command {
        TaskCommand::Create(a) => {
            let mut target: Map<String, Value> = match (&a.export, &a.import, &a.target) {
                (Some(index), _, _) => {
                    json!({"action": "export", "export_index": index, "export_format": a.format})
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                }
                (_, Some(index), _) => {
                    let file = a.file.as_ref().context("--import needs --file")?;
                    let upload = upload(&c, file).await?;
                    json!({"action": "import", "import_index": index, "upload_id": upload})
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                }
                (_, _, Some(t)) => {
                    serde_json::from_str(t).context("--target is not a JSON object")?
                }
                // An identifier alone (cleanup_users; profile_import with --file).
                _ if a.identifier.is_some() => Map::new(),
                _ => bail!(
                    "give --export INDEX, --import INDEX --file PATH, --target JSON, or --identifier"
                ),
            };
            if a.import.is_none()
                && let Some(file) = &a.file
            {
                let upload = upload(&c, file).await?;
                target.insert("upload_id".into(), json!(upload));
            }
            if a.dry_run {
                target.insert("dry_run".into(), Value::Bool(true));
            }
            let segment: Option<Value> = a
                .segment
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .context("--segment is not JSON")?;
            let mut body = json!({"desc": a.desc, "target": target, "trigger": {"once": a.once, "repeat": a.repeat, "timezone": a.timezone, "segment": segment, "segment_id": a.segment_id}});
            if let Some(i) = a.identifier {
                body["identifier"] = json!(i);
            }
            let task = c.send(c.at(Method::POST, "/tasks").json(&body)).await?;
            println!("{}", serde_json::to_string_pretty(&task)?);
        }
        TaskCommand::List {
            state,
            identifier,
            limit,
            cursor,
            json,
        } => {
            let mut req = c
                .at(Method::GET, "/tasks")
                .query(&[("limit", limit.to_string())]);
            if let Some(s) = state {
                req = req.query(&[("state", s)]);
            }
            if let Some(i) = identifier {
                req = req.query(&[("identifier", i)]);
            }
            if let Some(cur) = cursor {
                req = req.query(&[("cursor", cur)]);
            }
            let page = c.send(req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(0);
            }
            println!(
                "{:>8}  {:<10}  {:<28}  {:<25}  desc",
                "id", "state", "identifier", "created"
            );
            for t in page["tasks"].as_array().into_iter().flatten() {
                // (A JSON value ignores the width: the id as a number.)
                let id = t["id"].as_i64().map(|i| i.to_string()).unwrap_or_default();
                println!(
                    "{id:>8}  {:<10}  {:<28}  {:<25}  {}",
                    t["state"]["code"].as_str().unwrap_or(""),
                    t["identifier"].as_str().unwrap_or(""),
                    t["state"]["created_date"].as_str().unwrap_or(""),
                    t["desc"].as_str().unwrap_or("")
                );
            }
            if let Some(next) = page["next_cursor"].as_str() {
                eprintln!("more: --cursor {next}");
            }
        }
        TaskCommand::Get { id } => {
            let task = c.send(c.at(Method::GET, &format!("/tasks/{id}"))).await?;
            println!("{}", serde_json::to_string_pretty(&task)?);
        }
        TaskCommand::Wait { id } => return wait(&c, id).await,
        TaskCommand::Download { id, output } => {
            let link = c
                .send(c.at(Method::GET, &format!("/tasks/{id}/download_url")))
                .await?;
            let url = link["url"].as_str().context("no url in the answer")?;
            let name = url
                .split('?')
                .next()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or("result")
                .to_string();
            let path = output.unwrap_or_else(|| PathBuf::from(&name));
            let resp = c.http.get(url).send().await?;
            if !resp.status().is_success() {
                bail!("download failed: {}", resp.status());
            }
            let pb = bar(
                resp.content_length(),
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            );
            let mut file = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("creating {}", path.display()))?;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await?;
                pb.inc(chunk.len() as u64);
            }
            file.flush().await?;
            pb.finish_and_clear();
            eprintln!("wrote {}", path.display());
        }
        TaskCommand::Execute { id } => print_state(
            &c.send(c.at(Method::POST, &format!("/tasks/{id}/execute")))
                .await?,
        ),
        TaskCommand::Cancel { id } => print_state(
            &c.send(c.at(Method::POST, &format!("/tasks/{id}/cancel")))
                .await?,
        ),
        TaskCommand::Delete { id } => {
            c.send(c.at(Method::DELETE, &format!("/tasks/{id}")))
                .await?;
            eprintln!("deleted task {id}");
        }
    }
    Ok(0)
}

fn print_state(task: &Value) {
    println!(
        "task {} is {}",
        task["id"],
        task["state"]["code"].as_str().unwrap_or("?")
    );
}

async fn upload(c: &Client, file: &std::path::Path) -> anyhow::Result<String> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let size = f.metadata().await?.len();
    let pb = bar(
        Some(size),
        "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
    );
    let counter = pb.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.inc(c.len() as u64);
        }
        chunk
    });
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("upload.csv")
        .to_string();
    let body = reqwest::Body::wrap_stream(stream);
    let resp = c
        .send(
            c.at(reqwest::Method::POST, "/uploads")
                .query(&[("filename", name)])
                .header("content-length", size)
                .body(body),
        )
        .await?;
    pb.finish_and_clear();
    Ok(resp["upload_id"]
        .as_str()
        .context("no upload_id in the answer")?
        .to_string())
}

async fn wait(c: &Client, id: i64) -> anyhow::Result<i32> {
    let pb = bar(None, "{spinner} {msg} {bar:40} {pos}/{len}");
    // A repeating task returns to READY after each run: it is followed
    // until a run that ends after the wait began, read from its logs.
    let mut logs_seen: Option<usize> = None;
    loop {
        let t = c
            .send(c.at(reqwest::Method::GET, &format!("/tasks/{id}")))
            .await?;
        let state = t["state"]["code"].as_str().unwrap_or("?").to_string();
        let logs = t["logs"].as_array().cloned().unwrap_or_default();
        let repeating = t["trigger"]["repeat"]
            .as_str()
            .is_some_and(|r| !r.is_empty());
        let seen = *logs_seen.get_or_insert(logs.len());
        let ended_run = logs.iter().skip(seen).find_map(|l| {
            l["msg"]
                .as_str()?
                .strip_prefix("INPROGRESS -> ")
                .filter(|to| matches!(*to, "DONE" | "ERROR" | "FATAL" | "CANCELLED"))
                .map(str::to_string)
        });
        let eta = t["progress"]["eta_seconds"]
            .as_f64()
            .map(|s| format!(" eta {}s", s.round()))
            .unwrap_or_default();
        let waiting = match t["trigger"]["once"].as_str() {
            Some(at) if state == "READY" => format!(" (next run at {at})"),
            _ => String::new(),
        };
        pb.set_message(format!("{state}{eta}{waiting}"));
        if let (Some(done), Some(total)) = (
            t["progress"]["done"].as_u64(),
            t["progress"]["total"].as_u64(),
        ) {
            pb.set_length(total.max(done));
            pb.set_position(done);
        }
        pb.tick();
        let ended = match (&ended_run, repeating) {
            (Some(run_state), true) => Some(run_state.clone()),
            _ if !matches!(state.as_str(), "READY" | "INPROGRESS") => Some(state.clone()),
            _ => None,
        };
        if let Some(ended) = ended {
            pb.finish_and_clear();
            if repeating {
                println!(
                    "task {id}'s run ended {ended}; it repeats, next at {}",
                    t["trigger"]["once"].as_str().unwrap_or("?")
                );
            } else {
                println!("task {id} is {ended}");
            }
            if let Some(errors) = t["errors"].as_object().filter(|e| !e.is_empty()) {
                println!("{}", serde_json::to_string_pretty(errors)?);
            }
            return Ok(if ended == "DONE" { 0 } else { 1 });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
