//! `http`: `GET /tasks/{id}` and `POST /tasks` under load on loopback, from
//! `wrk` in a process of its own when it is installed (`scripts/bench`
//! installs it), else from a client in this process, which then competes
//! with the server for the same cores and understates it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::start;
use crate::{Opts, machine};

/// Requests in flight at once.
const CONCURRENCY: usize = 32;

struct Load {
    /// Requests answered per second.
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `make` from `CONCURRENCY` workers for `secs`; every answer must be
/// `expect`.
async fn load(
    secs: f64,
    expect: u16,
    make: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
) -> anyhow::Result<Load> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let make = make.clone();
        workers.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let resp = make().send().await?;
                let status = resp.status().as_u16();
                resp.bytes().await?;
                anyhow::ensure!(status == expect, "answered {status}, expected {expect}");
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = workers.join_next().await {
        all.extend(r??);
    }
    let elapsed = start.elapsed();
    all.sort();
    let at = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
    Ok(Load {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// `wrk` on the PATH, if any.
fn wrk() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("wrk"))
            .find(|p| p.is_file())
    })
}

/// One route under `wrk` (one thread, `CONCURRENCY` connections, latency
/// percentiles); a non-2xx answer fails the measure.
fn load_wrk(
    wrk: &std::path::Path,
    secs: f64,
    url: &str,
    key: &str,
    body: Option<&Value>,
) -> anyhow::Result<Load> {
    let script = tempfile::NamedTempFile::new()?;
    let mut lua = format!("wrk.headers[\"Authorization\"] = \"Bearer {key}\"\n");
    if let Some(body) = body {
        // A Lua long string: the JSON needs no escaping.
        lua.push_str(&format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
        ));
    }
    std::fs::write(script.path(), lua)?;
    let out = std::process::Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{CONCURRENCY}"),
            &format!("-d{}s", secs.max(1.0).round()),
        ])
        .arg("--latency")
        .arg("-s")
        .arg(script.path())
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "some answers were not 2xx:\n{text}"
    );
    let field = |label: &str| -> anyhow::Result<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .ok_or_else(|| anyhow::anyhow!("no '{label}' in wrk's output:\n{text}"))
    };
    let rate: f64 = field("Requests/sec:")?.parse()?;
    let p50 = wrk_duration(field("50%")?)?;
    let p99 = wrk_duration(field("99%")?)?;
    Ok(Load { rate, p50, p99 })
}

/// `wrk`'s latencies: `812.00us`, `1.23ms`, `2.01s`.
fn wrk_duration(s: &str) -> anyhow::Result<Duration> {
    let (n, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| anyhow::anyhow!("a latency without a unit: {s}"))?;
    let n: f64 = n.parse()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => anyhow::bail!("unknown latency unit in {s}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

pub async fn measure(o: &Opts) -> anyhow::Result<String> {
    let wrk = wrk();
    let mut rows = String::new();
    for (name, url) in crate::backends(o) {
        let db = match &url {
            None => None,
            Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
        };
        let b = start(db).await?;
        let http = reqwest::Client::new();
        // Tasks due far in the future: the engine leaves them alone.
        let later = json!({
            "identifier": "segment_count_recipients",
            "trigger": { "once": "2099-01-01T00:00:00Z" }
        });
        let first: Value = http
            .post(format!("{}/tasks", b.url))
            .bearer_auth(&b.key)
            .json(&later)
            .send()
            .await?
            .json()
            .await?;
        let id = first["id"].as_i64().unwrap_or(0);
        let (url_get, key) = (format!("{}/tasks/{id}", b.url), b.key.clone());
        let get = {
            let http = http.clone();
            Arc::new(move || http.get(&url_get).bearer_auth(&key))
        };
        let (url_post, key) = (format!("{}/tasks", b.url), b.key.clone());
        let post = {
            let http = http.clone();
            let body = later.clone();
            Arc::new(move || http.post(&url_post).bearer_auth(&key).json(&body))
        };
        let get_url = format!("{}/tasks/{id}", b.url);
        let post_url = format!("{}/tasks", b.url);
        for (route, make, expect, wrk_target) in [
            (
                "GET /tasks/{id}",
                get as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
                200,
                (get_url.as_str(), None),
            ),
            (
                "POST /tasks",
                post as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
                201,
                (post_url.as_str(), Some(&later)),
            ),
        ] {
            let l = match &wrk {
                Some(wrk) => {
                    let (wrk, secs, key) = (wrk.clone(), o.http_secs, b.key.clone());
                    let (url, body) = (wrk_target.0.to_string(), wrk_target.1.cloned());
                    tokio::task::spawn_blocking(move || {
                        load_wrk(&wrk, secs, &url, &key, body.as_ref())
                    })
                    .await??
                }
                None => load(o.http_secs, expect, make).await?,
            };
            let rate = l.rate;
            eprintln!(
                "{name} {route}: {rate:.0} req/s, p50 {:?}, p99 {:?}",
                l.p50, l.p99
            );
            rows.push_str(&format!(
                "| {name} | `{route}` | {rate:.0} | {:.2} ms | {:.2} ms |\n",
                l.p50.as_secs_f64() * 1000.0,
                l.p99.as_secs_f64() * 1000.0
            ));
        }
        b.stop().await?;
    }
    let client = if wrk.is_some() {
        "from `wrk` (one thread) in a process of its own on the same two cores"
    } else {
        "from a client in the same process (client and server share the two cores; \
         `wrk` was not installed)"
    };
    Ok(format!(
        "### HTTP under load\n\n{CONCURRENCY} requests in flight for {} s per route, keep-alive, \
         {client}, {}. Command: `datask-bench http --http-secs {}`.\n\n\
         | store | route | req/s | p50 | p99 |\n|---|---|---|---|---|\n{rows}\n",
        o.http_secs,
        machine(),
        o.http_secs
    ))
}
