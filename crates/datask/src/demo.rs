//! `serve --demo`: a demo tenant whose indexes are filled by real import
//! tasks from generated files, so the demo runs the same path users do.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use datask_core::Store;
use datask_core::Trigger;
use datask_core::index::ALL;
use datask_core::store::{Credential, CredentialKind, NewTenant, Upload};
use datask_core::task::NewTask;
use datask_engine::FileStore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::synth;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Demo {
    pub tenant_id: i64,
    pub apptoken: String,
    pub privileged_key: String,
}

/// Rows per index in the demo.
fn demo_rows(index: &str) -> u64 {
    match index {
        "users" => 5_000,
        "transactions" => 20_000,
        "vouchers" => 3_000,
        "wallet-ledger" => 10_000,
        "products" => 500,
        "devices" => 4_000,
        "lists" => 5,
        "list-members" => 1_500,
        "campaigns" => 20,
        "sends" => 10_000,
        _ => 1_500,
    }
}

/// Creates the demo tenant once per data directory; later starts reuse it.
/// Its secrets are kept in `demo.json` there (demo only: real tenants'
/// secrets are never stored, only their hashes).
pub async fn seed(
    store: &Arc<dyn Store>,
    files: &FileStore,
    data_dir: &Path,
) -> anyhow::Result<Demo> {
    let path = data_dir.join("demo.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let demo: Demo = serde_json::from_str(&text).context("reading demo.json")?;
        if store.tenant(demo.tenant_id).await?.is_some() {
            return Ok(demo);
        }
    }
    let tenant = store
        .create_tenant(NewTenant {
            name: "demo".into(),
            timezone: "Europe/Amsterdam".into(),
            concurrency: 4,
        })
        .await?;
    // The synthetic profiles carry these attributes (see synth.rs).
    store
        .update_tenant(
            tenant.clone(),
            datask_core::settings::ProfileSettings {
                attributes: vec![
                    attribute("tier", datask_core::settings::AttributeType::String),
                    attribute("points", datask_core::settings::AttributeType::Number),
                ],
                ..Default::default()
            },
        )
        .await?;
    let demo = Demo {
        tenant_id: tenant.id,
        apptoken: datask_api::new_secret("dtk_app_"),
        privileged_key: datask_api::new_secret("dtk_priv_"),
    };
    for (secret, kind) in [
        (&demo.apptoken, CredentialKind::AppToken),
        (&demo.privileged_key, CredentialKind::PrivilegedKey),
    ] {
        store
            .add_credential(Credential {
                tenant_id: tenant.id,
                kind,
                secret_sha256: datask_api::hash_secret(secret),
            })
            .await?;
    }
    let now = jiff::Timestamp::now();
    for (n, index) in ALL.iter().enumerate() {
        let mut csv = Vec::new();
        synth::write_csv(index, demo_rows(index.name), 42 + n as u64, &mut csv)?;
        let id = format!(
            "demo{}{}",
            tenant.id,
            index.table.trim_start_matches("idx_").replace('_', "")
        );
        let key = FileStore::upload_key(tenant.id, &id);
        let mut w = files.writer(&key);
        w.write_all(&csv).await?;
        w.shutdown().await?;
        store
            .insert_upload(Upload {
                id: id.clone(),
                tenant_id: tenant.id,
                size: csv.len() as i64,
                sha256: datask_api::sha256_hex(&csv),
                object_key: key,
                filename: Some(format!("{}.csv", index.name)),
                created_at: now,
            })
            .await?;
        let target = json!({ "action": "import", "import_index": index.name, "upload_id": id });
        store
            .insert_task(
                NewTask {
                    tenant_id: tenant.id,
                    identifier: "import".into(),
                    desc: format!("demo data for {}", index.name),
                    trigger: Trigger::default(),
                    target: target.as_object().cloned().unwrap_or_default(),
                    max_attempts: 3,
                    priority: 10,
                    run_at: now,
                    idempotency_key: None,
                },
                now,
            )
            .await?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&demo)?).context("writing demo.json")?;
    Ok(demo)
}

fn attribute(
    name: &str,
    ty: datask_core::settings::AttributeType,
) -> datask_core::settings::Attribute {
    datask_core::settings::Attribute {
        name: name.into(),
        ty,
        enabled: true,
        pii: false,
    }
}

pub fn instructions(demo: &Demo, url: &str) -> String {
    format!(
        "\ndemo tenant {id} is ready (import tasks are loading its indexes with synthetic data)\n\
         privileged key: {key}\n\
         app token:      {app}\n\n\
         open the console (the key is in the #fragment, which never leaves the browser):\n\
         {url}/console#key={key}\n\n\
         or with curl:\n\
         export DATASK_URL={url} DATASK_TOKEN={key}\n\
         curl -s -X POST $DATASK_URL/tasks -H \"Authorization: Bearer $DATASK_TOKEN\" -H 'Content-Type: application/json' \\\n  \
           -d '{{\"desc\":\"all users\",\"target\":{{\"action\":\"export\",\"export_index\":\"users\",\"export_format\":\"csv\"}}}}'\n\
         curl -s $DATASK_URL/tasks -H \"Authorization: Bearer $DATASK_TOKEN\"\n",
        id = demo.tenant_id,
        key = demo.privileged_key,
        app = demo.apptoken,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_link_the_console_with_the_key_in_the_fragment() {
        let demo = Demo {
            tenant_id: 1,
            apptoken: "dtk_app_a".into(),
            privileged_key: "dtk_priv_b".into(),
        };
        let text = instructions(&demo, "http://127.0.0.1:8080");
        assert!(
            text.contains("http://127.0.0.1:8080/console#key=dtk_priv_b\n"),
            "{text}"
        );
        assert!(!text.contains("?key="), "{text}");
    }
}
