//! A tenant's settings: its profile attribute schema, the column that
//! identifies a profile, its retention policy, time zone and concurrency.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributeType {
    String,
    Number,
    Boolean,
    Date,
}

/// A custom profile attribute. One known but not `enabled` is refused by
/// imports with the first seed's "is not set to be a profile attribute".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: AttributeType,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Erased by personal-data deletions.
    #[serde(default)]
    pub pii: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Profiles inactive for longer are deleted by `cleanup_users`.
    pub delete_inactive_after_days: i64,
}

/// An HTTP endpoint a tenant's integration syncs pull from: `url` is a
/// base (the syncs add their own paths), `token` goes as a bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The endpoints of a tenant's integrations, each absent until set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integrations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_directory: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kochava: Option<Endpoint>,
}

/// Names of the integrations, as they appear in settings.
pub const INTEGRATIONS: [&str; 2] = ["active_directory", "kochava"];

impl Integrations {
    pub fn get(&self, name: &str) -> Option<&Endpoint> {
        match name {
            "active_directory" => self.active_directory.as_ref(),
            "kochava" => self.kochava.as_ref(),
            _ => None,
        }
    }

    /// Sets or (with None) removes one; false for an unknown name.
    pub fn set(&mut self, name: &str, endpoint: Option<Endpoint>) -> bool {
        match name {
            "active_directory" => self.active_directory = endpoint,
            "kochava" => self.kochava = endpoint,
            _ => return false,
        }
        true
    }
}

/// The settings kept beside a tenant's name, time zone and concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileSettings {
    pub identifier_column: String,
    pub retention: Option<Retention>,
    pub attributes: Vec<Attribute>,
    /// Settings written before integrations existed have none.
    #[serde(default)]
    pub integrations: Integrations,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            identifier_column: "user_id".into(),
            retention: None,
            attributes: Vec::new(),
            integrations: Integrations::default(),
        }
    }
}

/// The `desc` of the daily `cleanup_users` task a retention policy makes.
pub const RETENTION_TASK_DESC: &str = "daily clean-up by the retention policy";

/// Columns that may identify a profile.
pub const IDENTIFIER_COLUMNS: [&str; 3] = ["user_id", "email", "mobile_number"];

/// How a `date` attribute is kept inside the profile's JSON: UTC to the
/// second, fixed width, so comparing the text compares the instants.
pub fn attribute_time(micros: i64) -> String {
    match jiff::Timestamp::from_second(micros.div_euclid(1_000_000)) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attribute_times_are_fixed_width() {
        assert_eq!(super::attribute_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::attribute_time(1_700_000_000_500_000),
            "2023-11-14T22:13:20Z"
        );
    }
}
