//! `io`: profile import and export against sqlite3 / COPY, then segment
//! counts against the same SQL by hand on the same database.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datask_core::index::USERS;
use datask_core::settings::Attribute;
use serde_json::{Value, json};

use crate::server::{Bench, start};
use crate::{Opts, machine, median};

/// Segment counts per filter and run.
const COUNT_RUNS: usize = 5;

struct Filter {
    label: &'static str,
    segment: Value,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Three filters of rising complexity, each with the SQL a person would
/// write for it (`{t}` is the tenant id).
fn filters() -> Vec<Filter> {
    vec![
        Filter {
            label: "country = NL",
            segment: json!({"field": "country", "op": "eq", "value": "NL"}),
            sqlite: "SELECT COUNT(*) FROM idx_users WHERE tenant_id = {t} AND country = 'NL'",
            postgres: "SELECT COUNT(*) FROM idx_users WHERE tenant_id = {t} AND country = 'NL'",
        },
        Filter {
            label: "country in (NL, DE) ∧ email opt-in ∧ points ≥ 5000 (attribute)",
            segment: json!({"all": [
                {"field": "country", "op": "in", "value": ["NL", "DE"]},
                {"field": "email_opt_in", "op": "eq", "value": true},
                {"field": "points", "op": "gte", "value": 5000}
            ]}),
            sqlite: "SELECT COUNT(*) FROM idx_users WHERE tenant_id = {t} AND country IN ('NL', 'DE') \
                     AND email_opt_in = 1 AND json_extract(attributes, '$.points') >= 5000",
            postgres: "SELECT COUNT(*) FROM idx_users WHERE tenant_id = {t} AND country IN ('NL', 'DE') \
                       AND email_opt_in AND (attributes->>'points')::float8 >= 5000",
        },
        Filter {
            label: "(tier = gold ∧ active after 2025-06-01) ∨ ¬(first name starts with A)",
            segment: json!({"any": [
                {"all": [
                    {"field": "tier", "op": "eq", "value": "gold"},
                    {"field": "last_active_at", "op": "after", "value": "2025-06-01"}
                ]},
                {"not": {"field": "first_name", "op": "starts_with", "value": "A"}}
            ]}),
            sqlite: "SELECT COUNT(*) FROM idx_users WHERE tenant_id = {t} AND \
                     ((json_extract(attributes, '$.tier') = 'gold' AND last_active_at > 1748736000000000) \
                     OR first_name IS NULL OR substr(first_name, 1, 1) <> 'A')",
            postgres: "SELECT COUNT(*) FROM idx_users WHERE tenant_id = {t} AND \
                       ((attributes->>'tier' = 'gold' AND last_active_at > '2025-06-01T00:00:00Z') \
                       OR first_name IS NULL OR left(first_name, 1) <> 'A')",
        },
    ]
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sqlite_stdin(db: &Path, script: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running sqlite3")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("sqlite3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// Import then export through datask; answers their times.
async fn datask_round(b: &Bench, csv: &Path, rows: u64) -> anyhow::Result<(Duration, Duration)> {
    let upload = b.upload(csv).await?;
    let (import, task) = b
        .task(json!({"identifier": "profile_import", "target": {"upload_id": upload}}))
        .await?;
    anyhow::ensure!(
        task["output"]["applied"] == rows,
        "import applied {}: {task}",
        task["output"]["applied"]
    );
    let (export, task) = b
        .task(json!({"target": {"action": "export", "export_index": "users", "export_format": "csv"}}))
        .await?;
    anyhow::ensure!(
        task["output"]["rows"] == rows,
        "export wrote {} rows",
        task["output"]["rows"]
    );
    Ok((import, export))
}

/// The store's count of each filter: (median time, count).
async fn datask_counts(b: &Bench) -> anyhow::Result<Vec<(Duration, i64)>> {
    // The attributes the bench tenant was given.
    let attrs: Vec<Attribute> =
        serde_json::from_value(crate::server::profile_settings()["attributes"].clone())?;
    let mut out = Vec::new();
    for f in filters() {
        let filter = datask_core::segment::parse_with(
            &USERS,
            &attrs,
            &f.segment,
            "segment",
            jiff::Timestamp::now(),
        )?;
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..COUNT_RUNS {
            let t = Instant::now();
            count = b.store.count_rows(b.tenant, &USERS, Some(&filter)).await?;
            times.push(t.elapsed());
        }
        out.push((median(times), count));
    }
    Ok(out)
}

/// The same counts by hand: sqlite3's `.timer` or psql's `\timing` (the
/// query's own time, not the client's start-up).
fn reference_counts(b: &Bench, pg: Option<&str>) -> anyhow::Result<Vec<(Duration, i64)>> {
    let mut out = Vec::new();
    for f in filters() {
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..COUNT_RUNS {
            let (text, time) = match pg {
                None => {
                    let sql = f.sqlite.replace("{t}", &b.tenant.to_string());
                    let db = b.dir.path().join("datask.db");
                    // The timer reports only for statements read from stdin.
                    let text = sqlite_stdin(&db, &format!(".timer on\n{sql};\n"))?;
                    let secs: f64 = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Run Time: real "))
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("no timer in {text}"))?;
                    (text, Duration::from_secs_f64(secs))
                }
                Some(url) => {
                    let sql = f.postgres.replace("{t}", &b.tenant.to_string());
                    let text = run(Command::new("psql").arg(url).args([
                        "-At",
                        "-c",
                        "\\timing on",
                        "-c",
                        &sql,
                    ]))?;
                    let ms: f64 = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Time: "))
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("no timing in {text}"))?;
                    (text, Duration::from_secs_f64(ms / 1000.0))
                }
            };
            count = text
                .lines()
                .find_map(|l| l.trim().parse::<i64>().ok())
                .with_context(|| format!("no count in {text}"))?;
            times.push(time);
        }
        out.push((median(times), count));
    }
    Ok(out)
}

fn sqlite_reference(csv: &Path, work: &Path) -> anyhow::Result<(Duration, Duration)> {
    let db = work.join("ref.db");
    let _ = std::fs::remove_file(&db);
    let import = timed(|| {
        run(Command::new("sqlite3")
            .arg(&db)
            .arg(format!(".import --csv {} users", csv.display())))
        .map(drop)
    })?;
    let out = work.join("ref-out.csv");
    let export = timed(|| {
        let file = std::fs::File::create(&out)?;
        let status = Command::new("sqlite3")
            .args(["-csv", "-header"])
            .arg(&db)
            .arg("SELECT * FROM users ORDER BY user_id")
            .stdout(file)
            .status()?;
        anyhow::ensure!(status.success(), "sqlite3 export failed");
        Ok(())
    })?;
    Ok((import, export))
}

fn pg_reference(csv: &Path, url: &str, work: &Path) -> anyhow::Result<(Duration, Duration)> {
    let header = std::fs::read_to_string(csv)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let cols: Vec<String> = header.split(',').map(|c| format!("{c} text")).collect();
    let psql = |sql: &str| run(Command::new("psql").arg(url).args(["-q", "-c", sql])).map(drop);
    psql("DROP TABLE IF EXISTS bench_users")?;
    psql(&format!("CREATE TABLE bench_users ({})", cols.join(", ")))?;
    let import = timed(|| {
        psql(&format!(
            "\\copy bench_users FROM '{}' CSV HEADER",
            csv.display()
        ))
    })?;
    let out = work.join("pg-out.csv");
    let export = timed(|| {
        psql(&format!(
            "\\copy (SELECT * FROM bench_users ORDER BY user_id) TO '{}' CSV HEADER",
            out.display()
        ))
    })?;
    psql("DROP TABLE bench_users")?;
    Ok((import, export))
}

pub async fn measure(o: &Opts) -> anyhow::Result<String> {
    let work = tempfile::tempdir()?;
    let csv = work.path().join("profiles.csv");
    datask::synth::write_profiles_csv(o.rows, 1, std::fs::File::create(&csv)?)?;
    let size = std::fs::metadata(&csv)?.len();
    eprintln!("generated {} profiles ({} MB)", o.rows, size / 1_000_000);

    let mut io_rows = String::new();
    let mut seg_rows = String::new();
    let n = filters().len();
    for (name, url) in crate::backends(o) {
        let (mut di, mut de, mut ri, mut re) = (vec![], vec![], vec![], vec![]);
        let mut dc: Vec<Vec<Duration>> = vec![vec![]; n];
        let mut rc: Vec<Vec<Duration>> = vec![vec![]; n];
        let mut counts = vec![0i64; n];
        for r in 0..o.runs {
            let db_url = match &url {
                None => None,
                Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
            };
            let b = start(db_url.clone()).await?;
            let (i, e) = datask_round(&b, &csv, o.rows).await?;
            let mine = datask_counts(&b).await?;
            let theirs = reference_counts(&b, db_url.as_deref())?;
            for (k, ((dt, dn), (rt, rn))) in mine.into_iter().zip(theirs).enumerate() {
                anyhow::ensure!(
                    dn == rn,
                    "{name}: filter {k} counted {dn} by datask, {rn} by hand"
                );
                dc[k].push(dt);
                rc[k].push(rt);
                counts[k] = dn;
            }
            b.stop().await?;
            let (ri1, re1) = match &url {
                None => sqlite_reference(&csv, work.path())?,
                Some(u) => pg_reference(&csv, u, work.path())?,
            };
            eprintln!(
                "{name} run {r}: datask import {i:?} export {e:?}; reference import {ri1:?} export {re1:?}"
            );
            di.push(i);
            de.push(e);
            ri.push(ri1);
            re.push(re1);
        }
        let (import_ref, export_ref) = if url.is_none() {
            ("sqlite3 .import", "sqlite3 -csv")
        } else {
            ("psql \\copy FROM", "psql \\copy TO")
        };
        for (measure, mine, reference, theirs) in [
            ("profile_import CSV", median(di), import_ref, median(ri)),
            ("export users CSV", median(de), export_ref, median(re)),
        ] {
            io_rows.push_str(&format!(
                "| {name}: {measure} | {:.2} s | {:.0} | {reference} | {:.2} s | {:.2}× |\n",
                mine.as_secs_f64(),
                o.rows as f64 / mine.as_secs_f64(),
                theirs.as_secs_f64(),
                mine.as_secs_f64() / theirs.as_secs_f64()
            ));
        }
        for (k, f) in filters().iter().enumerate() {
            let (mine, theirs) = (median(dc[k].clone()), median(rc[k].clone()));
            seg_rows.push_str(&format!(
                "| {name}: {} | {} | {:.1} ms | {:.1} ms | {:.2}× |\n",
                f.label,
                counts[k],
                mine.as_secs_f64() * 1000.0,
                theirs.as_secs_f64() * 1000.0,
                mine.as_secs_f64() / theirs.as_secs_f64()
            ));
        }
    }
    Ok(format!(
        "### Import and export\n\n{} profiles ({} MB CSV: standard fields and two custom attributes), \
         median of {} runs, {}. Command: `datask-bench io --rows {}`.\n\n\
         | measure | datask | rows/s | reference | reference time | ratio (datask / reference) |\n\
         |---|---|---|---|---|---|\n{io_rows}\n\
         ### Segment counts\n\nOver the {} imported profiles; the store's count (in process) against \
         the same SQL written by hand, timed by `sqlite3 .timer` / `psql \\timing`; median of {COUNT_RUNS} \
         counts per run, then of the runs.\n\n\
         | filter | count | datask | by hand | ratio |\n|---|---|---|---|---|\n{seg_rows}\n",
        o.rows,
        size / 1_000_000,
        o.runs,
        machine(),
        o.rows,
        o.rows,
    ))
}
