//! Audiences: a task's segment (`trigger.segment`, `trigger.segment_id`),
//! and the identifiers that count, preview and export them:
//! `segment_count_recipients`, `segment_export_profiles`,
//! `segment_export_devices`, `campaign_count_recipients`,
//! `campaign_preview_recipients`.

use async_trait::async_trait;
use datask_core::index::{CAMPAIGNS, DEVICE_IDS, IndexDef, PROFILE_IDS, USERS, Value as Cell};
use datask_core::segment::{Bound, Channel, Field, Filter, parse_with};
use datask_core::task::Counts;
use datask_engine::{Handler, Invalid, Outcome, TaskContext, TaskError};
use futures::StreamExt;
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::export::{export_to_file, exported, format_of, validate_format};
use crate::target;

/// The filter of a task over `index`: its `trigger.segment` (over the
/// index, with the tenant's attributes on profiles) and its saved
/// `trigger.segment_id` (profiles; other indexes follow `user_id`). The API
/// takes one or neither; a task stored with both (accepted before that
/// rule) gets both, ANDed. Both were checked when the task was accepted;
/// `within_days` counts back from the start of this run.
///
/// A saved segment deleted since is the caller's mistake, not ours: the
/// inner `Err` is the run's outcome, in ERROR, naming `trigger[segment_id]`.
pub(crate) async fn task_filter(
    ctx: &TaskContext,
    index: &'static IndexDef,
) -> Result<Result<Option<Filter>, Outcome>, TaskError> {
    let trigger = &ctx.task.trigger;
    if trigger.segment.is_none() && trigger.segment_id.is_none() {
        return Ok(Ok(None));
    }
    let settings = ctx.store.profile_settings(ctx.task.tenant_id).await?;
    let now = Timestamp::now();
    let mut parts = Vec::new();
    // A filter that no longer fits the tenant's fields (an attribute was
    // removed since it was accepted) is the input's problem: ERROR.
    if let Some(seg) = &trigger.segment {
        match parse_with(index, &settings.attributes, seg, "trigger.segment", now) {
            Ok(f) => parts.push(f),
            Err(e) => {
                return Ok(Err(input_error(
                    "trigger[segment]",
                    format!("The segment no longer fits this tenant's fields: {e}"),
                )));
            }
        }
    }
    if let Some(id) = &trigger.segment_id {
        let id: i64 = id
            .parse()
            .map_err(|_| TaskError::Fatal(format!("'{id}' is not a segment id")))?;
        let Some(saved) = ctx.store.get_segment(ctx.task.tenant_id, id).await? else {
            return Ok(Err(input_error(
                "trigger[segment_id]",
                format!("Segment {id} does not exist"),
            )));
        };
        let profiles = match parse_with(&USERS, &settings.attributes, &saved.filter, "segment", now)
        {
            Ok(f) => f,
            Err(e) => {
                return Ok(Err(input_error(
                    "trigger[segment_id]",
                    format!("Segment {id} no longer fits this tenant's fields: {e}"),
                )));
            }
        };
        parts.push(follow(index, profiles));
    }
    let filter = if parts.len() == 1 {
        parts.pop().expect("one")
    } else {
        Filter::All(parts)
    };
    // A list that is not there is a mistake, as `list_export` says, rather
    // than an audience of nobody.
    for list in filter.lists() {
        if !crate::lists::list_exists(ctx, list).await? {
            let key = if trigger.segment.is_some() {
                "trigger[segment]"
            } else {
                "trigger[segment_id]"
            };
            return Ok(Err(input_error(
                key,
                format!("List '{list}' does not exist"),
            )));
        }
    }
    Ok(Ok(Some(filter)))
}

/// A filter over profiles, applied to `index`.
fn follow(index: &'static IndexDef, profiles: Filter) -> Filter {
    if index.table == USERS.table {
        profiles
    } else {
        Filter::OwnedBy(Box::new(profiles))
    }
}

fn channel_field(t: &Map<String, Value>) -> Result<Option<Channel>, Invalid> {
    match target::string(t, "channel")? {
        None => Ok(None),
        Some(c) => Channel::parse(c).map(Some).ok_or_else(|| {
            Invalid::new(
                "channel",
                format!("'{c}' is not one of {}", Channel::NAMES.join(", ")),
            )
        }),
    }
}

fn with_channel(filter: Option<Filter>, channel: Option<Channel>) -> Option<Filter> {
    match (filter, channel) {
        (f, None) => f,
        (None, Some(c)) => Some(Filter::Eligible(c)),
        (Some(f), Some(c)) => Some(Filter::All(vec![f, Filter::Eligible(c)])),
    }
}

fn fatal(e: Invalid) -> TaskError {
    TaskError::Fatal(e.to_string())
}

fn counted(n: i64) -> Option<Counts> {
    Some(Counts {
        total: n,
        errors: 0,
        skips: 0,
        success: n,
    })
}

/// `segment_count_recipients`: how many profiles the segment holds, on one
/// `target.channel` or, with `target.per_channel`, on each channel too.
pub struct SegmentCount;

#[async_trait]
impl Handler for SegmentCount {
    fn identifier(&self) -> &'static str {
        "segment_count_recipients"
    }

    fn interactive(&self) -> bool {
        true
    }

    fn segment_index(&self, _: &Map<String, Value>) -> Option<&'static IndexDef> {
        Some(&USERS)
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "channel", "per_channel"])?;
        channel_field(t)?;
        target::boolean(t, "per_channel")?;
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let channel = channel_field(t).map_err(fatal)?;
        let segment = match task_filter(ctx, &USERS).await? {
            Ok(f) => f,
            Err(missing) => return Ok(missing),
        };
        let tenant = ctx.task.tenant_id;
        let count = ctx
            .store
            .count_rows(
                tenant,
                &USERS,
                with_channel(segment.clone(), channel).as_ref(),
            )
            .await?;
        let mut output = json!({ "count": count });
        if let Some(c) = channel {
            output["channel"] = json!(c.as_str());
        }
        if target::boolean(t, "per_channel").unwrap_or(false) {
            let mut per = Map::new();
            for c in Channel::ALL {
                let n = ctx
                    .store
                    .count_rows(
                        tenant,
                        &USERS,
                        with_channel(segment.clone(), Some(c)).as_ref(),
                    )
                    .await?;
                per.insert(c.as_str().into(), json!(n));
            }
            output["channels"] = Value::Object(per);
        }
        Ok(Outcome {
            output: Some(output),
            counts: counted(count),
            ..Default::default()
        })
    }
}

/// `segment_export_profiles` (user ids) and `segment_export_devices`
/// (device ids with their owner and platform; with `target.channel` =
/// push, only devices with push enabled).
pub struct SegmentExport {
    devices: bool,
}

impl SegmentExport {
    pub const fn profiles() -> Self {
        SegmentExport { devices: false }
    }
    pub const fn devices() -> Self {
        SegmentExport { devices: true }
    }
}

#[async_trait]
impl Handler for SegmentExport {
    fn identifier(&self) -> &'static str {
        if self.devices {
            "segment_export_devices"
        } else {
            "segment_export_profiles"
        }
    }

    fn segment_index(&self, _: &Map<String, Value>) -> Option<&'static IndexDef> {
        Some(&USERS)
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "export_format", "channel"])?;
        channel_field(t)?;
        validate_format(t)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let channel = channel_field(t).map_err(fatal)?;
        let format = format_of(t);
        let profiles = match task_filter(ctx, &USERS).await? {
            Ok(f) => with_channel(f, channel),
            Err(missing) => return Ok(missing),
        };
        let (view, filter) = if self.devices {
            let mut parts = Vec::new();
            if let Some(p) = profiles {
                parts.push(Filter::OwnedBy(Box::new(p)));
            }
            if channel == Some(Channel::Push) {
                parts.push(Filter::Compare {
                    column: Field::Column("push_enabled"),
                    op: "=",
                    value: Bound::Bool(true),
                });
            }
            (
                &DEVICE_IDS,
                (!parts.is_empty()).then_some(Filter::All(parts)),
            )
        } else {
            (&PROFILE_IDS, profiles)
        };
        let stem = if self.devices { "devices" } else { "profiles" };
        let (key, rows) = export_to_file(ctx, view, filter.as_ref(), format, stem).await?;
        Ok(exported(
            key,
            rows,
            json!({ "rows": rows, "format": format.extension() }),
        ))
    }
}

/// `campaign_count_recipients` and `campaign_preview_recipients`: the
/// campaign's segment (its `segment` filter, else its saved `segment_id`,
/// else everyone) ∧ its channel's eligibility.
pub struct CampaignAudience {
    preview: bool,
}

impl CampaignAudience {
    pub const fn count() -> Self {
        CampaignAudience { preview: false }
    }
    pub const fn preview() -> Self {
        CampaignAudience { preview: true }
    }
}

const PREVIEW_DEFAULT: i64 = 10;
const PREVIEW_MAX: i64 = 100;

/// What a preview shows of each recipient.
const PREVIEW_FIELDS: [&str; 5] = [
    "user_id",
    "email",
    "mobile_number",
    "first_name",
    "last_name",
];

#[async_trait]
impl Handler for CampaignAudience {
    fn identifier(&self) -> &'static str {
        if self.preview {
            "campaign_preview_recipients"
        } else {
            "campaign_count_recipients"
        }
    }

    fn interactive(&self) -> bool {
        true
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        if self.preview {
            target::only_fields(t, &["action", "campaign_id", "limit"])?;
            match t.get("limit") {
                None | Some(Value::Null) => {}
                Some(v) => {
                    v.as_i64()
                        .filter(|n| (1..=PREVIEW_MAX).contains(n))
                        .ok_or_else(|| {
                            Invalid::new(
                                "limit",
                                format!("must be a whole number from 1 to {PREVIEW_MAX}"),
                            )
                        })?;
                }
            }
        } else {
            target::only_fields(t, &["action", "campaign_id"])?;
        }
        let id = target::required_string(t, "campaign_id")?;
        if id.is_empty() {
            return Err(Invalid::new("campaign_id", "must not be empty"));
        }
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let campaign_id = target::required_string(t, "campaign_id").map_err(fatal)?;
        let tenant = ctx.task.tenant_id;
        let Some(campaign) = find_row(ctx, &CAMPAIGNS, "campaign_id", campaign_id).await? else {
            return Ok(input_error(
                "target[campaign_id]",
                format!("Campaign '{campaign_id}' does not exist"),
            ));
        };
        let cell = |name: &str| {
            CAMPAIGNS
                .column(name)
                .map(|(i, _)| campaign[i].clone())
                .unwrap_or(Cell::Null)
        };
        let channel = match cell("channel") {
            Cell::Text(c) => Channel::parse(&c),
            _ => None,
        };
        let Some(channel) = channel else {
            return Ok(input_error(
                "campaign[channel]",
                format!(
                    "Campaign '{campaign_id}' has no channel; expected one of {}",
                    Channel::NAMES.join(", ")
                ),
            ));
        };
        let settings = ctx.store.profile_settings(tenant).await?;
        let now = Timestamp::now();
        let segment = match (cell("segment"), cell("segment_id")) {
            (Cell::Json(text), _) => {
                let json: Value = serde_json::from_str(&text)
                    .map_err(|e| TaskError::Fatal(format!("campaign segment: {e}")))?;
                match parse_with(&USERS, &settings.attributes, &json, "campaign.segment", now) {
                    Ok(f) => Some(f),
                    Err(e) => return Ok(input_error("campaign[segment]", e.to_string())),
                }
            }
            (_, Cell::Integer(id)) => {
                let Some(saved) = ctx.store.get_segment(tenant, id).await? else {
                    return Ok(input_error(
                        "campaign[segment_id]",
                        format!(
                            "Campaign '{campaign_id}' targets segment {id}, which does not exist"
                        ),
                    ));
                };
                match parse_with(&USERS, &settings.attributes, &saved.filter, "segment", now) {
                    Ok(f) => Some(f),
                    Err(e) => return Ok(input_error("campaign[segment_id]", e.to_string())),
                }
            }
            _ => None,
        };
        let audience = with_channel(segment, Some(channel));
        let count = ctx
            .store
            .count_rows(tenant, &USERS, audience.as_ref())
            .await?;
        let mut output = json!({
            "campaign_id": campaign_id,
            "channel": channel.as_str(),
            "count": count,
        });
        if self.preview {
            let limit = t
                .get("limit")
                .and_then(Value::as_i64)
                .unwrap_or(PREVIEW_DEFAULT) as usize;
            let positions: Vec<(usize, &str)> = PREVIEW_FIELDS
                .iter()
                .filter_map(|f| USERS.column(f).map(|(i, _)| (i, *f)))
                .collect();
            let mut recipients = Vec::new();
            let mut rows = ctx
                .store
                .export_rows(tenant, &USERS, audience.as_ref())
                .await?;
            'read: while let Some(batch) = rows.next().await {
                for row in batch? {
                    if recipients.len() >= limit {
                        break 'read;
                    }
                    let mut o = Map::new();
                    for (i, name) in &positions {
                        o.insert(
                            (*name).into(),
                            match &row[*i] {
                                Cell::Text(s) => json!(s),
                                _ => Value::Null,
                            },
                        );
                    }
                    recipients.push(Value::Object(o));
                }
            }
            output["recipients"] = Value::Array(recipients);
        }
        Ok(Outcome {
            output: Some(output),
            counts: counted(count),
            ..Default::default()
        })
    }
}

/// The row of `index` whose `column` is `value`, if any.
pub(crate) async fn find_row(
    ctx: &TaskContext,
    index: &'static IndexDef,
    column: &'static str,
    value: &str,
) -> Result<Option<Vec<Cell>>, TaskError> {
    let filter = Filter::Compare {
        column: Field::Column(column),
        op: "=",
        value: Bound::Text(value.to_string()),
    };
    let mut rows = ctx
        .store
        .export_rows(ctx.task.tenant_id, index, Some(&filter))
        .await?;
    while let Some(batch) = rows.next().await {
        if let Some(row) = batch?.into_iter().next() {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

/// An outcome in ERROR: the task's input names something that is not there.
pub(crate) fn input_error(key: &str, message: String) -> Outcome {
    let mut errors = Map::new();
    errors.insert(key.into(), json!([message]));
    Outcome {
        had_errors: true,
        errors,
        counts: counted(0),
        ..Default::default()
    }
}
