//! What an import file is checked against: an index's columns and, for
//! profiles, the tenant's custom attributes and identifier column.

use datask_core::index::{ColumnType, IndexDef, USERS};
use datask_core::settings::{AttributeType, ProfileSettings};

use datask_core::index::Value;

use crate::cell;
use crate::import::{ColumnProblem, RowProblem};

/// Where a file column's values go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// An index column (its position in `index.columns`).
    Column(usize),
    /// A custom attribute (its position in `Schema::attributes`), written
    /// into the profile's `attributes` object.
    Attribute(usize),
    /// A column reported as a problem and otherwise ignored.
    Ignored,
}

/// The columns an import accepts. See [`Schema::index`] and
/// [`Schema::profiles`].
#[derive(Debug, Clone)]
pub struct Schema {
    pub(crate) index: &'static IndexDef,
    /// Enabled custom attributes: name and type.
    pub(crate) attributes: Vec<(String, ColumnType)>,
    /// Attributes the tenant knows but has not enabled for profiles.
    pub(crate) disabled: Vec<String>,
    /// The index column a row must hold (the key, or the tenant's
    /// identifier column for profiles).
    pub(crate) identifier: usize,
    /// Profiles: the first seed's wording, and column problems reported
    /// without stopping the import (those columns are ignored).
    pub(crate) profiles: bool,
    /// Columns that are not profile fields are skipped without a word.
    pub(crate) quiet: bool,
    /// The generic import into `users`: the `attributes` column (a JSON
    /// object) is checked against `attributes` and `disabled`.
    pub(crate) checks_attribute_object: bool,
}

impl Schema {
    /// Exactly the index's columns; a column problem stops the import.
    pub fn index(index: &'static IndexDef) -> Self {
        Schema {
            index,
            attributes: Vec::new(),
            disabled: Vec::new(),
            identifier: 0,
            profiles: false,
            quiet: false,
            checks_attribute_object: false,
        }
    }

    /// The generic `import` into `users`: exactly the index's columns, as
    /// [`Self::index`], but the keys and values of the `attributes` object
    /// must be the tenant's enabled attributes and fit their types, as the
    /// columns of a `profile_import` must.
    pub fn users_index(settings: &ProfileSettings) -> Self {
        let profiles = Schema::profiles(settings);
        Schema {
            attributes: profiles.attributes,
            disabled: profiles.disabled,
            checks_attribute_object: true,
            ..Schema::index(&USERS)
        }
    }

    /// Profiles as `profile_import` reads them: the standard fields, the
    /// tenant's enabled attributes (case-sensitive names), rows identified by
    /// the tenant's identifier column. Unknown and disabled columns are
    /// reported in the first seed's words and skipped. When the identifier
    /// is not `user_id`, a row without a `user_id` gets its identifier's
    /// value as `user_id`.
    pub fn profiles(settings: &ProfileSettings) -> Self {
        let ty = |t: AttributeType| match t {
            AttributeType::String => ColumnType::Text,
            AttributeType::Number => ColumnType::Number,
            AttributeType::Boolean => ColumnType::Boolean,
            AttributeType::Date => ColumnType::Time,
        };
        Schema {
            index: &USERS,
            attributes: settings
                .attributes
                .iter()
                .filter(|a| a.enabled)
                .map(|a| (a.name.clone(), ty(a.ty)))
                .collect(),
            disabled: settings
                .attributes
                .iter()
                .filter(|a| !a.enabled)
                .map(|a| a.name.clone())
                .collect(),
            identifier: USERS
                .column(&settings.identifier_column)
                .map(|(i, _)| i)
                .unwrap_or(0),
            profiles: true,
            quiet: false,
            checks_attribute_object: false,
        }
    }

    /// Files that name profiles (list imports): the identifier column is
    /// read, with the standard fields; anything else is skipped silently.
    pub fn identifiers(settings: &ProfileSettings) -> Self {
        let mut schema = Schema::profiles(settings);
        schema.attributes.clear();
        schema.disabled.clear();
        schema.quiet = true;
        schema
    }

    /// Checks an `attributes` object against the tenant's schema (see
    /// [`Self::users_index`]) and writes it as `profile_import` would have
    /// (typed values, times in one format, nulls left out).
    pub(crate) fn check_attribute_object(&self, json: &str) -> Result<Value, RowProblem> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| RowProblem {
                code: "invalid_value",
                column: Some("attributes".into()),
                message: format!("Column 'attributes' is not a JSON object: {e}"),
            })?;
        let mut names = Vec::with_capacity(object.len());
        let mut values = Vec::with_capacity(object.len());
        for (name, value) in &object {
            let Some((_, ty)) = self.attributes.iter().find(|(n, _)| n == name) else {
                let why = if self.disabled.contains(name) {
                    "is not set to be a profile attribute"
                } else {
                    "is not a recognized attribute"
                };
                return Err(RowProblem {
                    code: "unknown_attribute",
                    column: Some("attributes".into()),
                    message: format!("Column 'attributes' has attribute '{name}', which {why}"),
                });
            };
            let spec = cell::Spec {
                name,
                ty: *ty,
                required: false,
            };
            let text = value.to_string();
            let parsed = cell::json_cell(&spec, false, Some(&text)).map_err(|mut p| {
                p.column = Some("attributes".into());
                p.message = format!(
                    "Column 'attributes': attribute {}",
                    p.message.trim_start_matches("Column ")
                );
                p
            })?;
            names.push(name.clone());
            values.push(parsed);
        }
        Ok(crate::import::attributes_json(&names, values.into_iter()))
    }

    pub fn index_def(&self) -> &'static IndexDef {
        self.index
    }

    /// Whether index column `c` must not be empty in a row.
    pub(crate) fn is_identifier(&self, c: usize) -> bool {
        if self.profiles {
            c == self.identifier
        } else {
            self.index.is_key(c)
        }
    }

    /// Maps a header to slots. Problems come in header order, then the
    /// missing required columns; `fatal` when the import cannot go on.
    pub(crate) fn map_header(&self, names: &[String]) -> (Vec<Slot>, Vec<ColumnProblem>, bool) {
        let index = self.index;
        if names.len() > MAX_COLUMNS {
            // Far more than any index holds (profiles: 14 fields and at most
            // 500 attributes); refused before any per-column work.
            let problem = ColumnProblem {
                column: String::new(),
                message: format!(
                    "The header has {} columns; at most {MAX_COLUMNS} are accepted",
                    names.len()
                ),
            };
            return (vec![Slot::Ignored; names.len()], vec![problem], true);
        }
        let mut slots = Vec::with_capacity(names.len());
        let mut problems = Vec::new();
        let mut fatal = false;
        // Times each name was seen so far: duplicates found in one pass.
        let mut seen: std::collections::HashMap<&str, u32> =
            std::collections::HashMap::with_capacity(names.len());
        for (pos, full_name) in names.iter().enumerate() {
            let earlier = {
                let n = seen.entry(full_name.as_str()).or_insert(0);
                *n += 1;
                *n - 1
            };
            let name = &shown(full_name);
            let problem = |message: String| ColumnProblem {
                column: name.clone(),
                message,
            };
            let name = full_name;
            if name.is_empty() {
                problems.push(problem(format!(
                    "Column {} of the header has no name",
                    pos + 1
                )));
                fatal |= !self.profiles;
                slots.push(Slot::Ignored);
            } else if earlier > 0 {
                // Reported once, at its second appearance.
                if earlier == 1 {
                    problems.push(problem(format!(
                        "Column '{}' appears more than once",
                        shown(name)
                    )));
                }
                fatal = true;
                slots.push(Slot::Ignored);
            } else if let Some((i, _)) = index
                .column(name)
                .filter(|(_, c)| !(self.profiles && c.merge))
            {
                slots.push(Slot::Column(i));
            } else if let Some(a) = self
                .attributes
                .iter()
                .position(|(n, _)| n == name)
                .filter(|_| self.profiles)
            {
                slots.push(Slot::Attribute(a));
            } else if self.quiet {
                slots.push(Slot::Ignored);
            } else if self.profiles && self.disabled.contains(name) {
                problems.push(problem(format!(
                    "Column '{}' is not set to be a profile attribute",
                    shown(name)
                )));
                slots.push(Slot::Ignored);
            } else if self.profiles {
                problems.push(problem(format!(
                    "Column '{}' is not a recognized user profile field or attribute",
                    shown(name)
                )));
                slots.push(Slot::Ignored);
            } else if self.checks_attribute_object && self.attributes.iter().any(|(n, _)| n == name)
            {
                // The generic import takes exactly the index's columns.
                problems.push(problem(format!(
                    "Column '{}' is a profile attribute: give it inside the 'attributes' column as a JSON object, or import the file with profile_import",
                    shown(name)
                )));
                fatal = true;
                slots.push(Slot::Ignored);
            } else {
                problems.push(problem(format!(
                    "Column '{}' is not a recognized field of index '{}'",
                    shown(name),
                    index.name
                )));
                fatal = true;
                slots.push(Slot::Ignored);
            }
        }
        let has = |i: usize| slots.contains(&Slot::Column(i));
        for (i, col) in index.columns.iter().enumerate() {
            let needed = if self.profiles {
                i == self.identifier
            } else {
                index.is_key(i) || col.required
            };
            if needed && !has(i) {
                fatal = true;
                problems.push(ColumnProblem {
                    column: col.name.to_string(),
                    message: if self.profiles {
                        format!("Column '{}' is required: it identifies profiles", col.name)
                    } else if index.is_key(i) {
                        format!(
                            "Column '{}' is required: it identifies the rows of index '{}'",
                            col.name, index.name
                        )
                    } else {
                        format!(
                            "Column '{}' is required by index '{}'",
                            col.name, index.name
                        )
                    },
                });
            }
        }
        (slots, problems, fatal)
    }
}

/// Columns a header may have.
pub const MAX_COLUMNS: usize = 2_000;

/// A column name as a message shows it: at most 100 characters, so that a
/// huge header cell is not copied into every report.
fn shown(name: &str) -> String {
    match name.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name.to_string(),
    }
}
