//! `memory`: peak resident memory (VmHWM) of a whole server process that
//! imports a generated profiles CSV through `profile_import` and exports
//! it, at a small and a large size, each in a fresh process.

use std::process::Command;

use anyhow::Context;
use serde_json::json;

use crate::server::start;
use crate::{Opts, machine};

/// Runs in the child: generate, upload, import, export; print the peak.
pub async fn child(rows: u64, pg: Option<String>) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let csv = work.path().join("profiles.csv");
    datask::synth::write_profiles_csv(rows, 7, std::fs::File::create(&csv)?)?;
    let db = match &pg {
        None => None,
        Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
    };
    let b = start(db).await?;
    let upload = b.upload(&csv).await?;
    let (_, task) = b
        .task(json!({"identifier": "profile_import", "target": {"upload_id": upload}}))
        .await?;
    anyhow::ensure!(task["output"]["applied"] == rows, "import: {task}");
    let (_, task) = b
        .task(json!({"target": {"action": "export", "export_index": "users", "export_format": "csv"}}))
        .await?;
    anyhow::ensure!(task["output"]["rows"] == rows, "export: {task}");
    b.stop().await?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .to_string();
    println!("peak_kb={peak}");
    Ok(())
}

fn peak_kb(rows: u64, pg: Option<&str>) -> anyhow::Result<u64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["memory-child", "--child-rows", &rows.to_string()]);
    if let Some(u) = pg {
        cmd.args(["--child-pg", u]);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "memory run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("peak_kb="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no peak in {text}"))
}

pub async fn measure(o: &Opts) -> anyhow::Result<String> {
    let mut rows = String::new();
    for (name, url) in crate::backends(o) {
        // A process's peak varies by ±15 % from run to run here (the
        // allocator's timing of handing pages back): the median of the runs.
        let peak = |rows: u64| -> anyhow::Result<u64> {
            let mut kb = (0..o.runs.max(1))
                .map(|_| peak_kb(rows, url.as_deref()))
                .collect::<anyhow::Result<Vec<u64>>>()?;
            kb.sort_unstable();
            Ok(kb[kb.len() / 2])
        };
        let small = peak(o.memory_small)?;
        let large = peak(o.memory_large)?;
        eprintln!(
            "{name} memory: {small} kB at {} rows, {large} kB at {} rows",
            o.memory_small, o.memory_large
        );
        rows.push_str(&format!(
            "| {name} | {:.0} MB | {:.0} MB | {:.2}× |\n",
            small as f64 / 1024.0,
            large as f64 / 1024.0,
            large as f64 / small as f64
        ));
    }
    Ok(format!(
        "### Peak memory\n\nPeak resident memory (VmHWM) of one process running the API, the engine \
         and the store while a profiles CSV is uploaded, imported with `profile_import` and exported \
         as CSV; a fresh process per run, median of {} runs per size, {}. Command: `datask-bench memory --memory-small {} --memory-large {}`.\n\n\
         | store | {} rows | {} rows | ratio |\n|---|---|---|---|\n{rows}\n",
        o.runs.max(1),
        machine(),
        o.memory_small,
        o.memory_large,
        o.memory_small,
        o.memory_large
    ))
}
