//! `http`: `GET /tasks/{id}` and `POST /tasks` under load on loopback, from
//! a client in the same process (so client and server share the cores: the
//! figures understate what a separate load generator would see).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::start;
use crate::{Opts, machine};

/// Requests in flight at once.
const CONCURRENCY: usize = 32;

struct Load {
    requests: usize,
    elapsed: Duration,
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
        requests: all.len(),
        elapsed,
        p50: at(0.5),
        p99: at(0.99),
    })
}

pub async fn measure(o: &Opts) -> anyhow::Result<String> {
    let mut rows = String::new();
    let backends: Vec<(&str, Option<String>)> = std::iter::once(("SQLite", None))
        .chain(o.pg_url.clone().map(|u| ("PostgreSQL", Some(u))))
        .collect();
    for (name, url) in backends {
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
        for (route, make, expect) in [
            (
                "GET /tasks/{id}",
                get as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
                200,
            ),
            (
                "POST /tasks",
                post as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
                201,
            ),
        ] {
            let l = load(o.http_secs, expect, make).await?;
            let rate = l.requests as f64 / l.elapsed.as_secs_f64();
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
    Ok(format!(
        "### HTTP under load\n\n{CONCURRENCY} requests in flight for {} s per route, keep-alive, \
         from a client in the same process (client and server share the two cores), {}. \
         Command: `datask-bench http --http-secs {}`.\n\n\
         | store | route | req/s | p50 | p99 |\n|---|---|---|---|---|\n{rows}\n",
        o.http_secs,
        machine(),
        o.http_secs
    ))
}
