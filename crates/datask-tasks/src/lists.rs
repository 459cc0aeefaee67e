//! Lists: `list_import` (through the import pipeline, see `import.rs`)
//! turns the profiles a file identifies into members of a list;
//! `list_export` writes the list's profiles.

use std::collections::HashMap;

use async_trait::async_trait;
use datask_core::index::{IndexDef, LIST_MEMBERS, LISTS, USERS, Value as Cell};
use datask_core::segment::Filter;
use datask_core::settings::ProfileSettings;
use datask_core::store::{ImportRow, RowReject};
use datask_engine::{Handler, Invalid, Outcome, TaskContext, TaskError};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::audience::{find_row, input_error};
use crate::export::{export_to_file, exported, format_of, validate_format};
use crate::target;

/// `target.list_id`: 1 to 200 characters.
pub(crate) fn list_id(t: &Map<String, Value>) -> Result<&str, Invalid> {
    let id = target::required_string(t, "list_id")?;
    if id.trim().is_empty() || id.chars().count() > 200 {
        return Err(Invalid::new("list_id", "must be 1 to 200 characters"));
    }
    Ok(id)
}

/// The text a parsed row holds at `pos` (empty when it is not text).
pub(crate) fn text_at(row: &ImportRow, pos: usize) -> String {
    match &row.values[pos] {
        Cell::Text(s) => s.clone(),
        _ => String::new(),
    }
}

/// The stored profiles whose `column` holds a value the rows hold at
/// `pos`: value → the user_ids holding it (sorted), in one lookup per batch.
pub(crate) async fn profiles_by(
    ctx: &TaskContext,
    column: &'static str,
    rows: &[ImportRow],
    pos: usize,
) -> Result<HashMap<String, Vec<String>>, TaskError> {
    let wanted = rows.iter().map(|r| text_at(r, pos)).collect();
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    for (value, user_id) in ctx
        .store
        .lookup_profiles(ctx.task.tenant_id, column, wanted)
        .await?
    {
        found.entry(value).or_default().push(user_id);
    }
    for ids in found.values_mut() {
        ids.sort_unstable();
    }
    Ok(found)
}

/// The reject of a row whose email or number several profiles share: which
/// one it meant cannot be told, and picking one would be a guess.
pub(crate) fn ambiguous_profile(
    column: &str,
    value: &str,
    ids: &[String],
    raw: String,
    row: i64,
) -> RowReject {
    let shown: Vec<&str> = ids.iter().take(4).map(String::as_str).collect();
    RowReject {
        row,
        code: "ambiguous_identifier".into(),
        column: Some(column.into()),
        message: format!(
            "{} profiles have {column} '{value}' (user_id {}{}): give the row a user_id",
            ids.len(),
            shown.join(", "),
            if ids.len() > shown.len() { ", …" } else { "" }
        ),
        raw,
    }
}

/// Where a `list_import` writes, and how it finds profiles.
pub(crate) struct ListTarget {
    pub list_id: String,
    identifier: &'static str,
}

impl ListTarget {
    pub fn new(t: &Map<String, Value>, settings: &ProfileSettings) -> Result<Self, Invalid> {
        let identifier = USERS
            .column(&settings.identifier_column)
            .map(|(_, c)| c.name)
            .unwrap_or("user_id");
        Ok(ListTarget {
            list_id: list_id(t)?.to_string(),
            identifier,
        })
    }

    /// Turns a batch of parsed profile rows into list-member rows; rows
    /// whose identifier matches no profile become rejects.
    pub async fn members(
        &self,
        ctx: &TaskContext,
        columns: &[usize],
        rows: Vec<ImportRow>,
        mut rejects: Vec<RowReject>,
    ) -> Result<(Vec<usize>, Vec<ImportRow>, Vec<RowReject>), TaskError> {
        let (at, _) = USERS.column(self.identifier).expect("a profile column");
        let pos = columns
            .iter()
            .position(|&c| c == at)
            .ok_or_else(|| TaskError::Fatal("the file has no identifier column".into()))?;
        let found = profiles_by(ctx, self.identifier, &rows, pos).await?;
        let now = Timestamp::now().as_microsecond();
        let mut members = Vec::with_capacity(rows.len());
        for row in rows {
            let value = text_at(&row, pos);
            match found.get(&value).map(Vec::as_slice) {
                Some(ids @ [_, _, ..]) => {
                    rejects.push(ambiguous_profile(
                        self.identifier,
                        &value,
                        ids,
                        row.raw,
                        row.row,
                    ));
                }
                Some([user_id, ..]) => members.push(ImportRow {
                    row: row.row,
                    values: vec![
                        Cell::Text(self.list_id.clone()),
                        Cell::Text(user_id.clone()),
                        Cell::Time(now),
                    ],
                    raw: row.raw,
                }),
                Some([]) | None => rejects.push(RowReject {
                    row: row.row,
                    code: "unknown_profile".into(),
                    column: Some(self.identifier.into()),
                    message: format!("No profile has {} '{value}'", self.identifier),
                    raw: row.raw,
                }),
            }
        }
        rejects.sort_by_key(|r| r.row);
        Ok(((0..LIST_MEMBERS.columns.len()).collect(), members, rejects))
    }
}

/// A list is there if it was described (`lists`) or has members
/// (`list_import` adds members only); otherwise its id is a mistake.
pub(crate) async fn list_exists(ctx: &TaskContext, list: &str) -> Result<bool, TaskError> {
    Ok(find_row(ctx, &LISTS, "list_id", list).await?.is_some()
        || find_row(ctx, &LIST_MEMBERS, "list_id", list)
            .await?
            .is_some())
}

/// `list_export`: the profiles on `target.list_id`, in any export format.
pub struct ListExport;

#[async_trait]
impl Handler for ListExport {
    fn identifier(&self) -> &'static str {
        "list_export"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "list_id", "export_format"])?;
        list_id(t)?;
        validate_format(t)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let t = &ctx.task.target;
        let list = list_id(t).map_err(|e| TaskError::Fatal(e.to_string()))?;
        if !list_exists(ctx, list).await? {
            return Ok(input_error(
                "target[list_id]",
                format!("List '{list}' does not exist"),
            ));
        }
        let format = format_of(t);
        let filter = Filter::InList {
            list: list.to_string(),
        };
        let index: &'static IndexDef = &USERS;
        let (key, rows) = export_to_file(ctx, index, Some(&filter), format, "list").await?;
        Ok(exported(
            key,
            rows,
            json!({ "rows": rows, "list_id": list, "format": format.extension() }),
        ))
    }
}
