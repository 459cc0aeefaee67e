//! `message_export_campaign` (campaigns with their delivery statistics over
//! a date range) and `message_export_send` (per-recipient sends, by
//! campaign and date range). The range is `target.from` (inclusive) to
//! `target.to` (exclusive) on a send's `sent_at`; either may be left out.

use std::collections::HashMap;

use async_trait::async_trait;
use datask_core::index::{CAMPAIGNS, Column, ColumnType, IndexDef, SENDS, Value as Cell};
use datask_core::segment::{Bound, Field, Filter};
use datask_data::ExportWriter;
use datask_engine::{FileStore, Handler, Invalid, Outcome, TaskContext, TaskError};
use futures::StreamExt;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::audience::{find_row, input_error};
use crate::export::{export_to_file, exported, format_of, validate_format};
use crate::target;

/// A date (midnight UTC) or an RFC 3339 instant.
fn instant(t: &Map<String, Value>, field: &str) -> Result<Option<i64>, Invalid> {
    let Some(raw) = target::string(t, field)? else {
        return Ok(None);
    };
    datask_data::parse_time(raw.trim())
        .map(Some)
        .ok_or_else(|| {
            Invalid::new(
                field,
                format!(
                    "'{raw}' is not a date or date-time such as 2026-01-31 or 2026-01-31T09:00:00Z"
                ),
            )
        })
}

fn range(t: &Map<String, Value>) -> Result<(Option<i64>, Option<i64>), Invalid> {
    let (from, to) = (instant(t, "from")?, instant(t, "to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(Invalid::new("to", "must be after from"));
    }
    Ok((from, to))
}

/// Sends whose `sent_at` lies in the range (and of one campaign).
fn sends_filter(from: Option<i64>, to: Option<i64>, campaign: Option<&str>) -> Option<Filter> {
    let mut parts = Vec::new();
    if let Some(c) = campaign {
        parts.push(Filter::Compare {
            column: Field::Column("campaign_id"),
            op: "=",
            value: Bound::Text(c.to_string()),
        });
    }
    if let Some(f) = from {
        parts.push(Filter::Compare {
            column: Field::Column("sent_at"),
            op: ">=",
            value: Bound::Time(f),
        });
    }
    if let Some(t) = to {
        parts.push(Filter::Compare {
            column: Field::Column("sent_at"),
            op: "<",
            value: Bound::Time(t),
        });
    }
    (!parts.is_empty()).then_some(Filter::All(parts))
}

fn fatal(e: Invalid) -> TaskError {
    TaskError::Fatal(e.to_string())
}

/// `message_export_send`.
pub struct SendExport;

#[async_trait]
impl Handler for SendExport {
    fn identifier(&self) -> &'static str {
        "message_export_send"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "campaign_id", "from", "to", "export_format"])?;
        target::string(t, "campaign_id")?;
        range(t)?;
        validate_format(t)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let (from, to) = range(t).map_err(fatal)?;
        let campaign = target::string(t, "campaign_id").map_err(fatal)?;
        // A campaign is there if it was described or has sends; otherwise
        // the id is a mistake, not an empty export.
        if let Some(id) = campaign
            && find_row(ctx, &CAMPAIGNS, "campaign_id", id)
                .await?
                .is_none()
            && find_row(ctx, &SENDS, "campaign_id", id).await?.is_none()
        {
            return Ok(input_error(
                "target[campaign_id]",
                format!("Campaign '{id}' does not exist"),
            ));
        }
        let format = format_of(t);
        let filter = sends_filter(from, to, campaign);
        let (key, rows) = export_to_file(ctx, &SENDS, filter.as_ref(), format, "sends").await?;
        Ok(exported(
            key,
            rows,
            json!({ "rows": rows, "campaign_id": campaign, "format": format.extension() }),
        ))
    }
}

/// The shape of a campaign report row (not a table: computed per run).
static CAMPAIGN_REPORT: IndexDef = IndexDef {
    name: "campaign-report",
    table: "",
    key_len: 1,
    columns: &[
        Column::new("campaign_id", ColumnType::Text),
        Column::new("name", ColumnType::Text),
        Column::new("channel", ColumnType::Text),
        Column::new("status", ColumnType::Text),
        Column::new("sent_at", ColumnType::Time),
        Column::new("sent", ColumnType::Integer),
        Column::new("delivered", ColumnType::Integer),
        Column::new("opened", ColumnType::Integer),
        Column::new("clicked", ColumnType::Integer),
    ],
};

/// `message_export_campaign`: every campaign with its sends in the range
/// counted as sent, delivered, opened and clicked. Counts are gathered in
/// one pass over the sends, held per campaign (not per send).
pub struct CampaignExport;

#[async_trait]
impl Handler for CampaignExport {
    fn identifier(&self) -> &'static str {
        "message_export_campaign"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "from", "to", "export_format"])?;
        range(t)?;
        validate_format(t)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let (from, to) = range(t).map_err(fatal)?;
        let format = format_of(t);
        let tenant = ctx.task.tenant_id;
        let col = |name: &str| SENDS.column(name).map(|(i, _)| i).expect("a sends column");
        let (campaign_at, delivered_at, opened_at, clicked_at) = (
            col("campaign_id"),
            col("delivered_at"),
            col("opened_at"),
            col("clicked_at"),
        );
        let mut stats: HashMap<String, [i64; 4]> = HashMap::new();
        let filter = sends_filter(from, to, None);
        let mut sends = ctx
            .store
            .export_rows(tenant, &SENDS, filter.as_ref())
            .await?;
        while let Some(batch) = sends.next().await {
            ctx.checkpoint()?;
            for row in batch? {
                let Cell::Text(campaign) = &row[campaign_at] else {
                    continue;
                };
                let s = stats.entry(campaign.clone()).or_default();
                s[0] += 1;
                for (k, at) in [delivered_at, opened_at, clicked_at]
                    .into_iter()
                    .enumerate()
                {
                    if row[at] != Cell::Null {
                        s[k + 1] += 1;
                    }
                }
            }
        }
        let pick = |name: &str| {
            CAMPAIGNS
                .column(name)
                .map(|(i, _)| i)
                .expect("a campaigns column")
        };
        let fields = [
            pick("campaign_id"),
            pick("name"),
            pick("channel"),
            pick("status"),
            pick("sent_at"),
        ];
        let name = format!("campaigns-{}.{}", ctx.task.id, format.extension());
        let key = FileStore::result_key(tenant, ctx.task.id, ctx.fence, &name);
        let mut file = ctx.files.writer(&key);
        let mut encoder = ExportWriter::new(format, &CAMPAIGN_REPORT);
        let mut campaigns = ctx.store.export_rows(tenant, &CAMPAIGNS, None).await?;
        let mut count = 0i64;
        let written = async {
            while let Some(batch) = campaigns.next().await {
                ctx.checkpoint()?;
                for row in batch? {
                    let mut out: Vec<Cell> = fields.iter().map(|&i| row[i].clone()).collect();
                    let id = match &row[fields[0]] {
                        Cell::Text(id) => id.as_str(),
                        _ => "",
                    };
                    let s = stats.get(id).copied().unwrap_or_default();
                    out.extend(s.iter().map(|n| Cell::Integer(*n)));
                    encoder.write_row(&out);
                    count += 1;
                }
                file.write_all(&encoder.take_chunk())
                    .await
                    .map_err(io_failed)?;
            }
            file.write_all(&encoder.finish()).await.map_err(io_failed)?;
            file.shutdown().await.map_err(io_failed)?;
            Ok::<(), TaskError>(())
        }
        .await;
        if let Err(e) = written {
            let _ = file.abort().await;
            return Err(e);
        }
        Ok(exported(
            key,
            count,
            json!({ "rows": count, "format": format.extension(),
                    "from": from.and_then(|us| Timestamp::from_microsecond(us).ok()).map(|t| t.to_string()),
                    "to": to.and_then(|us| Timestamp::from_microsecond(us).ok()).map(|t| t.to_string()) }),
        ))
    }
}

fn io_failed(e: std::io::Error) -> TaskError {
    TaskError::Retryable(format!("writing the result: {e}"))
}
