//! One cell's text (or JSON value) to a typed value, with the problem named.

use datask_core::index::{Column, ColumnType, Value};

use crate::import::RowProblem;

fn shown(raw: &str) -> String {
    let mut s: String = raw.chars().take(40).collect();
    if raw.chars().count() > 40 {
        s.push('…');
    }
    s
}

fn invalid(col: &Column, raw: &str, expected: &str) -> RowProblem {
    RowProblem {
        code: "invalid_value",
        column: Some(col.name.to_string()),
        message: format!(
            "Column '{}' has '{}', expected {expected}",
            col.name,
            shown(raw)
        ),
    }
}

/// Parses a time: RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (UTC).
fn parse_time(raw: &str) -> Option<i64> {
    if let Ok(t) = raw.parse::<jiff::Timestamp>() {
        return Some(t.as_microsecond());
    }
    if let Ok(dt) = raw.parse::<jiff::civil::DateTime>() {
        return dt
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_microsecond());
    }
    if let Ok(d) = raw.parse::<jiff::civil::Date>() {
        return d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_microsecond());
    }
    None
}

/// A text cell. Empty is null, except for a required column.
pub fn parse_text(col: &Column, raw: &str) -> Result<Value, RowProblem> {
    if raw.is_empty() {
        return if col.required {
            Err(RowProblem {
                code: "missing_identifier",
                column: Some(col.name.to_string()),
                message: format!("Column '{}' is empty", col.name),
            })
        } else {
            Ok(Value::Null)
        };
    }
    Ok(match col.ty {
        ColumnType::Text => Value::Text(raw.to_string()),
        ColumnType::Integer => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| invalid(col, raw, "an integer"))?,
        ),
        ColumnType::Number => {
            let f: f64 = raw
                .trim()
                .parse()
                .map_err(|_| invalid(col, raw, "a number"))?;
            if !f.is_finite() {
                return Err(invalid(col, raw, "a finite number"));
            }
            Value::Number(f)
        }
        ColumnType::Boolean => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Boolean(true),
            "false" | "0" | "no" => Value::Boolean(false),
            _ => return Err(invalid(col, raw, "true or false")),
        },
        ColumnType::Time => Value::Time(
            parse_time(raw.trim())
                .ok_or_else(|| invalid(col, raw, "an ISO 8601 date or date-time"))?,
        ),
        ColumnType::Json => match serde_json::from_str::<serde_json::Value>(raw) {
            // Kept as written: validated, not reformatted.
            Ok(serde_json::Value::Object(_)) => Value::Json(raw.trim().to_string()),
            _ => return Err(invalid(col, raw, "a JSON object")),
        },
    })
}

/// A JSON-lines value: strings are read like CSV cells, other JSON types
/// must fit the column.
pub fn parse_json(col: &Column, v: Option<&serde_json::Value>) -> Result<Value, RowProblem> {
    use serde_json::Value as J;
    match v {
        None | Some(J::Null) => parse_text(col, ""),
        Some(J::String(s)) => parse_text(col, s),
        Some(J::Number(n)) => match col.ty {
            ColumnType::Integer => n
                .as_i64()
                .map(Value::Integer)
                .ok_or_else(|| invalid(col, &n.to_string(), "an integer")),
            ColumnType::Number => n
                .as_f64()
                .map(Value::Number)
                .ok_or_else(|| invalid(col, &n.to_string(), "a number")),
            ColumnType::Time => {
                let secs = n.as_i64().ok_or_else(|| {
                    invalid(col, &n.to_string(), "unix seconds or an ISO 8601 date-time")
                })?;
                Ok(Value::Time(secs.saturating_mul(1_000_000)))
            }
            ColumnType::Text => Ok(Value::Text(n.to_string())),
            _ => Err(invalid(col, &n.to_string(), type_name(col.ty))),
        },
        Some(J::Bool(b)) => match col.ty {
            ColumnType::Boolean => Ok(Value::Boolean(*b)),
            _ => Err(invalid(col, &b.to_string(), type_name(col.ty))),
        },
        Some(o @ J::Object(_)) if col.ty == ColumnType::Json => Ok(Value::Json(o.to_string())),
        Some(other) => Err(invalid(col, &other.to_string(), type_name(col.ty))),
    }
}

fn type_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text => "a string",
        ColumnType::Integer => "an integer",
        ColumnType::Number => "a number",
        ColumnType::Boolean => "true or false",
        ColumnType::Time => "an ISO 8601 date-time",
        ColumnType::Json => "a JSON object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datask_core::index::{PRODUCTS, USERS};

    fn col(index: &'static datask_core::index::IndexDef, name: &str) -> &'static Column {
        index.column(name).unwrap().1
    }

    #[test]
    fn cells_by_type() {
        let price = col(&PRODUCTS, "price");
        assert_eq!(parse_text(price, "10.50").unwrap(), Value::Number(10.5));
        assert_eq!(parse_text(price, "").unwrap(), Value::Null);
        assert_eq!(
            parse_text(price, "abc").unwrap_err().message,
            "Column 'price' has 'abc', expected a number"
        );
        assert_eq!(parse_text(price, "inf").unwrap_err().code, "invalid_value");
        let active = col(&PRODUCTS, "active");
        for (raw, b) in [
            ("true", true),
            ("YES", true),
            ("1", true),
            ("False", false),
            ("no", false),
            ("0", false),
        ] {
            assert_eq!(parse_text(active, raw).unwrap(), Value::Boolean(b), "{raw}");
        }
        assert!(parse_text(active, "maybe").is_err());
        let created = col(&USERS, "created_at");
        assert_eq!(
            parse_text(created, "1970-01-02").unwrap(),
            Value::Time(86_400_000_000)
        );
        assert_eq!(
            parse_text(created, "1970-01-01T00:00:01Z").unwrap(),
            Value::Time(1_000_000)
        );
        assert_eq!(
            parse_text(created, "1970-01-01 00:01:00").unwrap(),
            Value::Time(60_000_000)
        );
        assert_eq!(
            parse_text(created, "1970-01-01T02:00:00+02:00").unwrap(),
            Value::Time(0)
        );
        assert!(parse_text(created, "yesterday").is_err());
        let attrs = col(&USERS, "attributes");
        assert_eq!(
            parse_text(attrs, r#"{"a": 1}"#).unwrap(),
            Value::Json(r#"{"a": 1}"#.into())
        );
        assert!(parse_text(attrs, "[1]").is_err());
        let key = col(&USERS, "user_id");
        assert_eq!(parse_text(key, "").unwrap_err().code, "missing_identifier");
        let long = "x".repeat(100);
        assert!(parse_text(price, &long).unwrap_err().message.contains('…'));
    }

    #[test]
    fn json_values() {
        let stock = col(&datask_core::index::PRODUCT_VARIANTS, "stock");
        assert_eq!(
            parse_json(stock, Some(&serde_json::json!(5))).unwrap(),
            Value::Integer(5)
        );
        assert_eq!(
            parse_json(stock, Some(&serde_json::json!("6"))).unwrap(),
            Value::Integer(6)
        );
        assert!(parse_json(stock, Some(&serde_json::json!(true))).is_err());
        assert!(parse_json(stock, Some(&serde_json::json!(1.5))).is_err());
        assert_eq!(parse_json(stock, None).unwrap(), Value::Null);
    }
}
