//! Segment filters: `{"all": [...]}`, `{"any": [...]}`, `{"not": ...}` and
//! leaves `{"field", "op", "value"}` over an index's columns, compiled to a
//! parameterised `WHERE` fragment. Columns come from the compiled-in schema,
//! operators from a fixed list, values are always bound.

use jiff::Timestamp;
use serde_json::Value as Json;

use crate::index::{ColumnType, IndexDef};

pub const MAX_DEPTH: usize = 8;
pub const MAX_LEAVES: usize = 200;
pub const MAX_LIST: usize = 1000;
pub const OPS: [&str; 15] = [
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "is_null",
    "not_null",
    "within_days",
    "before",
    "after",
];

/// A bound value, typed for its column.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Microseconds since the epoch.
    Time(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Compare {
        column: &'static str,
        op: &'static str,
        value: Bound,
    },
    In {
        column: &'static str,
        negated: bool,
        values: Vec<Bound>,
    },
    Contains {
        column: &'static str,
        value: String,
    },
    StartsWith {
        column: &'static str,
        value: String,
    },
    Null {
        column: &'static str,
        negated: bool,
    },
}

/// A mistake in a segment, with where it is (`trigger.segment.all[1].op`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SegmentError {
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> SegmentError {
    SegmentError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Parses a segment over `index`; `within_days` is counted back from `now`.
pub fn parse(
    index: &'static IndexDef,
    json: &Json,
    path: &str,
    now: Timestamp,
) -> Result<Filter, SegmentError> {
    let mut leaves = 0;
    parse_node(index, json, path, 1, &mut leaves, now)
}

fn parse_node(
    index: &'static IndexDef,
    json: &Json,
    path: &str,
    depth: usize,
    leaves: &mut usize,
    now: Timestamp,
) -> Result<Filter, SegmentError> {
    if depth > MAX_DEPTH {
        return Err(err(path, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let obj = json.as_object().ok_or_else(|| err(path, "expected an object: {\"all\": [...]}, {\"any\": [...]}, {\"not\": ...} or {\"field\", \"op\", \"value\"}"))?;
    for group in ["all", "any"] {
        if let Some(items) = obj.get(group) {
            if obj.len() != 1 {
                return Err(err(path, format!("'{group}' stands alone in its object")));
            }
            let items = items
                .as_array()
                .ok_or_else(|| err(&format!("{path}.{group}"), "expected a list"))?;
            let parsed = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    parse_node(
                        index,
                        item,
                        &format!("{path}.{group}[{i}]"),
                        depth + 1,
                        leaves,
                        now,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if group == "all" {
                Filter::All(parsed)
            } else {
                Filter::Any(parsed)
            });
        }
    }
    if let Some(inner) = obj.get("not") {
        if obj.len() != 1 {
            return Err(err(path, "'not' stands alone in its object"));
        }
        return Ok(Filter::Not(Box::new(parse_node(
            index,
            inner,
            &format!("{path}.not"),
            depth + 1,
            leaves,
            now,
        )?)));
    }
    *leaves += 1;
    if *leaves > MAX_LEAVES {
        return Err(err(path, format!("more than {MAX_LEAVES} conditions")));
    }
    if let Some(k) = obj
        .keys()
        .find(|k| !["field", "op", "value"].contains(&k.as_str()))
    {
        return Err(err(
            &format!("{path}.{k}"),
            "unknown key; a condition has field, op and value",
        ));
    }
    let field = obj
        .get("field")
        .and_then(Json::as_str)
        .ok_or_else(|| err(&format!("{path}.field"), "required (a string)"))?;
    let (_, col) = index.column(field).ok_or_else(|| {
        let names: Vec<&str> = index.columns.iter().map(|c| c.name).collect();
        err(
            &format!("{path}.field"),
            format!(
                "unknown field '{field}' of index '{}'; expected one of {}",
                index.name,
                names.join(", ")
            ),
        )
    })?;
    let op_name = obj
        .get("op")
        .and_then(Json::as_str)
        .ok_or_else(|| err(&format!("{path}.op"), "required (a string)"))?;
    if op_name == "in_list" {
        return Err(err(
            &format!("{path}.op"),
            "'in_list' needs lists, which are not available yet in this version of datask",
        ));
    }
    let op = OPS.iter().find(|o| **o == op_name).ok_or_else(|| {
        err(
            &format!("{path}.op"),
            format!("unknown op '{op_name}'; expected one of {}", OPS.join(", ")),
        )
    })?;
    let vpath = format!("{path}.value");
    let value = obj.get("value").unwrap_or(&Json::Null);
    let column = col.name;
    let ty = col.ty;
    let typed = |v: &Json| bound(ty, v, &vpath, field);
    Ok(match *op {
        "is_null" | "not_null" => Filter::Null {
            column,
            negated: *op == "not_null",
        },
        "in" | "not_in" => {
            let items = value
                .as_array()
                .ok_or_else(|| err(&vpath, format!("'{op}' needs a list")))?;
            if items.len() > MAX_LIST {
                return Err(err(&vpath, format!("at most {MAX_LIST} values")));
            }
            Filter::In {
                column,
                negated: *op == "not_in",
                values: items.iter().map(typed).collect::<Result<_, _>>()?,
            }
        }
        "contains" | "starts_with" => {
            if ty != ColumnType::Text {
                return Err(err(
                    &format!("{path}.op"),
                    format!("'{op}' works on text fields; '{field}' is not text"),
                ));
            }
            let s = value
                .as_str()
                .ok_or_else(|| err(&vpath, format!("'{op}' needs a string")))?
                .to_string();
            if *op == "contains" {
                Filter::Contains { column, value: s }
            } else {
                Filter::StartsWith { column, value: s }
            }
        }
        "within_days" => {
            if ty != ColumnType::Time {
                return Err(err(
                    &format!("{path}.op"),
                    format!("'within_days' works on time fields; '{field}' is not one"),
                ));
            }
            let days = value
                .as_i64()
                .filter(|d| (0..=36_500).contains(d))
                .ok_or_else(|| {
                    err(
                        &vpath,
                        "'within_days' needs a whole number of days from 0 to 36500",
                    )
                })?;
            Filter::Compare {
                column,
                op: ">=",
                value: Bound::Time(now.as_microsecond() - days * 86_400_000_000),
            }
        }
        "before" | "after" => {
            if ty != ColumnType::Time {
                return Err(err(
                    &format!("{path}.op"),
                    format!("'{op}' works on time fields; '{field}' is not one"),
                ));
            }
            Filter::Compare {
                column,
                op: if *op == "before" { "<" } else { ">" },
                value: typed(value)?,
            }
        }
        cmp => {
            if matches!(ty, ColumnType::Boolean | ColumnType::Json) && !matches!(cmp, "eq" | "ne") {
                return Err(err(
                    &format!("{path}.op"),
                    format!("'{cmp}' does not order '{field}'; use eq or ne"),
                ));
            }
            let sql_op = match cmp {
                "eq" => "=",
                "ne" => "<>",
                "lt" => "<",
                "lte" => "<=",
                "gt" => ">",
                _ => ">=",
            };
            Filter::Compare {
                column,
                op: sql_op,
                value: typed(value)?,
            }
        }
    })
}

fn bound(ty: ColumnType, v: &Json, path: &str, field: &str) -> Result<Bound, SegmentError> {
    let wrong = |what: &str| err(path, format!("'{field}' needs {what}, not {v}"));
    match ty {
        ColumnType::Text => v
            .as_str()
            .map(|s| Bound::Text(s.to_string()))
            .ok_or_else(|| wrong("a string")),
        ColumnType::Integer => v
            .as_i64()
            .map(Bound::Int)
            .ok_or_else(|| wrong("an integer")),
        ColumnType::Number => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Bound::Float)
            .ok_or_else(|| wrong("a number")),
        ColumnType::Boolean => v
            .as_bool()
            .map(Bound::Bool)
            .ok_or_else(|| wrong("true or false")),
        ColumnType::Time => v
            .as_str()
            .and_then(|s| {
                s.parse::<Timestamp>().ok().or_else(|| {
                    s.parse::<jiff::civil::Date>()
                        .ok()
                        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                        .map(|z| z.timestamp())
                })
            })
            .map(|t| Bound::Time(t.as_microsecond()))
            .ok_or_else(|| wrong("an ISO 8601 date or date-time")),
        ColumnType::Json => Err(err(
            path,
            format!("'{field}' holds JSON objects; only is_null and not_null apply"),
        )),
    }
}

/// How a store writes placeholders and reads its columns.
pub trait Dialect {
    fn placeholder(&self, n: usize) -> String;
    /// A time parameter as the column's type.
    fn time(&self, placeholder: &str) -> String;
    /// 1-based position of `needle` in `column`, 0 when absent (case-sensitive).
    fn position(&self, column: &str, needle: &str) -> String;
}

impl Filter {
    /// The `WHERE` fragment with placeholders numbered from `first`, and the
    /// values to bind in order.
    pub fn to_sql(&self, d: &dyn Dialect, first: usize) -> (String, Vec<Bound>) {
        let mut params = Vec::new();
        let sql = self.sql(d, first, &mut params);
        (sql, params)
    }

    fn sql(&self, d: &dyn Dialect, first: usize, params: &mut Vec<Bound>) -> String {
        let bind = |b: &Bound, params: &mut Vec<Bound>| {
            params.push(b.clone());
            let ph = d.placeholder(first + params.len() - 1);
            if matches!(b, Bound::Time(_)) {
                d.time(&ph)
            } else {
                ph
            }
        };
        match self {
            Filter::All(items) if items.is_empty() => "1 = 1".into(),
            Filter::Any(items) if items.is_empty() => "1 = 0".into(),
            Filter::All(items) => format!(
                "({})",
                items
                    .iter()
                    .map(|f| f.sql(d, first, params))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
            Filter::Any(items) => format!(
                "({})",
                items
                    .iter()
                    .map(|f| f.sql(d, first, params))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
            // The complement of the inner condition: rows it does not match,
            // NULLs included (comparisons themselves never match NULL).
            Filter::Not(inner) => format!("(NOT COALESCE({}, FALSE))", inner.sql(d, first, params)),
            Filter::Compare { column, op, value } => {
                format!("{column} {op} {}", bind(value, params))
            }
            Filter::In {
                values, negated, ..
            } if values.is_empty() => {
                if *negated {
                    "1 = 1".into()
                } else {
                    "1 = 0".into()
                }
            }
            Filter::In {
                column,
                negated,
                values,
            } => {
                let phs: Vec<String> = values.iter().map(|v| bind(v, params)).collect();
                format!(
                    "{column} {}IN ({})",
                    if *negated { "NOT " } else { "" },
                    phs.join(", ")
                )
            }
            Filter::Contains { column, value } => {
                let ph = bind(&Bound::Text(value.clone()), params);
                format!("{} > 0", d.position(column, &ph))
            }
            Filter::StartsWith { column, value } => {
                let ph = bind(&Bound::Text(value.clone()), params);
                format!("{} = 1", d.position(column, &ph))
            }
            Filter::Null { column, negated } => {
                format!("{column} IS {}NULL", if *negated { "NOT " } else { "" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::USERS;
    use serde_json::json;

    struct Pg;
    impl Dialect for Pg {
        fn placeholder(&self, n: usize) -> String {
            format!("${n}")
        }
        fn time(&self, p: &str) -> String {
            format!("T({p})")
        }
        fn position(&self, c: &str, n: &str) -> String {
            format!("strpos({c}, {n})")
        }
    }

    #[test]
    fn compiles_to_fixed_sql_and_bound_values() {
        let seg = json!({"all": [
            {"field": "country", "op": "in", "value": ["NL", "DE"]},
            {"any": [{"field": "email", "op": "contains", "value": "'; DROP TABLE x; --"}, {"not": {"field": "sms_opt_in", "op": "eq", "value": true}}]},
            {"field": "created_at", "op": "after", "value": "2025-01-01T00:00:00Z"},
            {"field": "last_name", "op": "is_null"}
        ]});
        let f = parse(&USERS, &seg, "segment", Timestamp::UNIX_EPOCH).unwrap();
        let (sql, params) = f.to_sql(&Pg, 2);
        assert_eq!(
            sql,
            "(country IN ($2, $3) AND (strpos(email, $4) > 0 OR (NOT COALESCE(sms_opt_in = $5, FALSE))) AND created_at > T($6) AND last_name IS NULL)"
        );
        assert_eq!(params[2], Bound::Text("'; DROP TABLE x; --".into()));
        assert_eq!(params[4], Bound::Time(1_735_689_600_000_000));
    }

    #[test]
    fn mistakes_name_their_place() {
        let cases = [
            (
                json!({"field": "colour", "op": "eq", "value": "red"}),
                "segment.field",
                "unknown field 'colour'",
            ),
            (
                json!({"field": "country", "op": "like", "value": "N%"}),
                "segment.op",
                "unknown op 'like'",
            ),
            (
                json!({"all": [{"field": "country", "op": "eq", "value": 3}]}),
                "segment.all[0].value",
                "'country' needs a string",
            ),
            (
                json!({"field": "country", "op": "within_days", "value": 3}),
                "segment.op",
                "time fields",
            ),
            (
                json!({"field": "sms_opt_in", "op": "gt", "value": true}),
                "segment.op",
                "use eq or ne",
            ),
            (
                json!({"field": "email", "op": "in_list", "value": 1}),
                "segment.op",
                "not available yet",
            ),
            (
                json!({"any": {"field": "email"}}),
                "segment.any",
                "expected a list",
            ),
            (
                json!({"field": "email", "op": "eq", "value": "x", "extra": 1}),
                "segment.extra",
                "unknown key",
            ),
            (json!([1]), "segment", "expected an object"),
        ];
        for (seg, path, needle) in cases {
            let e = parse(&USERS, &seg, "segment", Timestamp::UNIX_EPOCH).unwrap_err();
            assert_eq!(e.path, path, "{seg}");
            assert!(e.message.contains(needle), "{seg}: {}", e.message);
        }
        let mut deep = json!({"field": "email", "op": "is_null"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(
            parse(&USERS, &deep, "segment", Timestamp::UNIX_EPOCH)
                .unwrap_err()
                .message
                .contains("deeper")
        );
    }
}
