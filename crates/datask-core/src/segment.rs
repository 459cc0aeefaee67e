//! Segment filters: `{"all": [...]}`, `{"any": [...]}`, `{"not": ...}` and
//! leaves `{"field", "op", "value"}` over an index's columns, compiled to a
//! parameterised `WHERE` fragment. Columns come from the compiled-in schema,
//! operators from a fixed list, values are always bound.

use jiff::Timestamp;
use serde_json::Value as Json;

use crate::index::{ColumnType, IndexDef, USERS};
use crate::settings::{Attribute, AttributeType, attribute_time};

pub const MAX_DEPTH: usize = 8;
pub const MAX_LEAVES: usize = 200;
pub const MAX_LIST: usize = 1000;
/// Values across every list of one filter: each is a bound parameter, and
/// SQLite takes at most 32,766 in a statement (40 lists of 1,000 were
/// accepted here and then failed every run of the task).
pub const MAX_VALUES: usize = 10_000;
pub const OPS: [&str; 16] = [
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
    "in_list",
];

/// What a leaf reads: a column of the index, or a custom attribute of a
/// profile (its name is bound as a value, never written into SQL).
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Column(&'static str),
    Attribute { name: String, ty: ColumnType },
}

/// A channel a campaign sends on, and who can receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An email address and email opt-in.
    Email,
    /// At least one device with push enabled.
    Push,
    /// A mobile number and SMS opt-in.
    Sms,
}

impl Channel {
    pub const NAMES: [&'static str; 3] = ["email", "push", "sms"];
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Push, Channel::Sms];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email" => Some(Channel::Email),
            "push" => Some(Channel::Push),
            "sms" => Some(Channel::Sms),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Push => "push",
            Channel::Sms => "sms",
        }
    }
}

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
        column: Field,
        op: &'static str,
        value: Bound,
    },
    In {
        column: Field,
        negated: bool,
        values: Vec<Bound>,
    },
    Contains {
        column: Field,
        value: String,
    },
    StartsWith {
        column: Field,
        value: String,
    },
    Null {
        column: Field,
        negated: bool,
    },
    /// Rows whose `user_id` is a member of the list.
    InList {
        list: String,
    },
    /// Profiles that can receive messages on the channel.
    Eligible(Channel),
    /// Rows of another index (devices, sends, …) whose `user_id` is a
    /// profile matching the inner filter.
    OwnedBy(Box<Filter>),
}

impl Filter {
    /// The lists `in_list` leaves name, in order, each once.
    pub fn lists(&self) -> Vec<&str> {
        fn walk<'a>(f: &'a Filter, out: &mut Vec<&'a str>) {
            match f {
                Filter::All(fs) | Filter::Any(fs) => fs.iter().for_each(|f| walk(f, out)),
                Filter::Not(f) | Filter::OwnedBy(f) => walk(f, out),
                Filter::InList { list } if !out.contains(&list.as_str()) => out.push(list),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
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
    parse_with(index, &[], json, path, now)
}

/// As [`parse`]; over profiles (`users`) a field may also name one of the
/// tenant's custom attributes (enabled or not: the data may hold it).
pub fn parse_with(
    index: &'static IndexDef,
    attributes: &[Attribute],
    json: &Json,
    path: &str,
    now: Timestamp,
) -> Result<Filter, SegmentError> {
    let values = list_values(json);
    if values > MAX_VALUES {
        return Err(err(
            path,
            format!("at most {MAX_VALUES} values in all the lists together, got {values}"),
        ));
    }
    let mut leaves = 0;
    let ctx = Ctx {
        index,
        attributes: if std::ptr::eq(index, &USERS) {
            attributes
        } else {
            &[]
        },
        now,
    };
    parse_node(&ctx, json, path, 1, &mut leaves)
}

/// The values of every condition's list, however deep (serde_json stops
/// nesting at 128 levels, so this recursion is bounded).
fn list_values(json: &Json) -> usize {
    match json {
        Json::Object(o) => o
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("value", Json::Array(items)) => items.len(),
                (_, v) => list_values(v),
            })
            .sum(),
        Json::Array(items) => items.iter().map(list_values).sum(),
        _ => 0,
    }
}

struct Ctx<'a> {
    index: &'static IndexDef,
    attributes: &'a [Attribute],
    now: Timestamp,
}

fn parse_node(
    ctx: &Ctx,
    json: &Json,
    path: &str,
    depth: usize,
    leaves: &mut usize,
) -> Result<Filter, SegmentError> {
    let index = ctx.index;
    let now = ctx.now;
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
                        ctx,
                        item,
                        &format!("{path}.{group}[{i}]"),
                        depth + 1,
                        leaves,
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
            ctx,
            inner,
            &format!("{path}.not"),
            depth + 1,
            leaves,
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
    let (column, ty) = match index.column(field) {
        Some((_, col)) => (Field::Column(col.name), col.ty),
        None => match ctx.attributes.iter().find(|a| a.name == field) {
            Some(a) => {
                let ty = match a.ty {
                    AttributeType::String => ColumnType::Text,
                    AttributeType::Number => ColumnType::Number,
                    AttributeType::Boolean => ColumnType::Boolean,
                    AttributeType::Date => ColumnType::Time,
                };
                (
                    Field::Attribute {
                        name: a.name.clone(),
                        ty,
                    },
                    ty,
                )
            }
            None => {
                let mut names: Vec<&str> = index.columns.iter().map(|c| c.name).collect();
                names.extend(ctx.attributes.iter().map(|a| a.name.as_str()));
                return Err(err(
                    &format!("{path}.field"),
                    format!(
                        "unknown field '{field}' of index '{}'; expected one of {}",
                        index.name,
                        names.join(", ")
                    ),
                ));
            }
        },
    };
    let op_name = obj
        .get("op")
        .and_then(Json::as_str)
        .ok_or_else(|| err(&format!("{path}.op"), "required (a string)"))?;
    if op_name == "in_list" {
        if field != "user_id" {
            return Err(err(
                &format!("{path}.field"),
                format!(
                    "'in_list' tests a profile's list membership: its field is user_id, not '{field}'"
                ),
            ));
        }
        let list = obj
            .get("value")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err(
                    &format!("{path}.value"),
                    "'in_list' needs a list id (a string)",
                )
            })?;
        return Ok(Filter::InList {
            list: list.to_string(),
        });
    }
    let op = OPS.iter().find(|o| **o == op_name).ok_or_else(|| {
        err(
            &format!("{path}.op"),
            format!("unknown op '{op_name}'; expected one of {}", OPS.join(", ")),
        )
    })?;
    let vpath = format!("{path}.value");
    let value = obj.get("value").unwrap_or(&Json::Null);
    let attribute = matches!(column, Field::Attribute { .. });
    // A date attribute is kept as fixed-width text: compare as text.
    let typed = |v: &Json| {
        bound(ty, v, &vpath, field).map(|b| match b {
            Bound::Time(us) if attribute => Bound::Text(attribute_time(us)),
            b => b,
        })
    };
    Ok(match *op {
        // A value here is a misunderstanding (`is_null: false`?): refused
        // rather than silently ignored.
        "is_null" | "not_null" if !value.is_null() => {
            return Err(err(&vpath, format!("'{op}' takes no value")));
        }
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
            let since = now.as_microsecond() - days * 86_400_000_000;
            Filter::Compare {
                column,
                op: ">=",
                value: if attribute {
                    Bound::Text(attribute_time(since))
                } else {
                    Bound::Time(since)
                },
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
    /// The custom attribute named by the text parameter `name` in the row's
    /// `attributes`, as `ty`; NULL when absent or of another JSON type.
    fn attribute(&self, name: &str, ty: ColumnType) -> String;
    /// Whether `column` starts with `needle` (case-sensitive).
    fn starts_with(&self, column: &str, needle: &str) -> String {
        format!("{} = 1", self.position(column, needle))
    }
    /// A text attribute equal to the text parameter `value`, where the
    /// dialect has a cheaper form than `attribute(…) = value`. It may be
    /// FALSE where that is NULL (an attribute of another JSON type): every
    /// `NOT` is taken of `COALESCE(…, FALSE)`, so the two select the same
    /// rows.
    fn text_attribute_equals(&self, _name: &str, _value: &str) -> Option<String> {
        None
    }
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
        let field = |f: &Field, params: &mut Vec<Bound>| match f {
            Field::Column(c) => c.to_string(),
            Field::Attribute { name, ty } => {
                params.push(Bound::Text(name.clone()));
                d.attribute(&d.placeholder(first + params.len() - 1), *ty)
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
                // The name and the value take the next two placeholders,
                // pushed only if the dialect has the cheaper form.
                if let (
                    Field::Attribute {
                        name,
                        ty: ColumnType::Text,
                    },
                    "=",
                    Bound::Text(_),
                ) = (column, *op, value)
                {
                    let next = first + params.len();
                    let (name_ph, value_ph) = (d.placeholder(next), d.placeholder(next + 1));
                    if let Some(sql) = d.text_attribute_equals(&name_ph, &value_ph) {
                        params.push(Bound::Text(name.clone()));
                        params.push(value.clone());
                        return sql;
                    }
                }
                let column = field(column, params);
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
                let column = field(column, params);
                let phs: Vec<String> = values.iter().map(|v| bind(v, params)).collect();
                format!(
                    "{column} {}IN ({})",
                    if *negated { "NOT " } else { "" },
                    phs.join(", ")
                )
            }
            Filter::Contains { column, value } => {
                let column = &field(column, params);
                let ph = bind(&Bound::Text(value.clone()), params);
                format!("{} > 0", d.position(column, &ph))
            }
            Filter::StartsWith { column, value } => {
                let column = &field(column, params);
                let ph = bind(&Bound::Text(value.clone()), params);
                d.starts_with(column, &ph)
            }
            Filter::Null { column, negated } => {
                let column = field(column, params);
                format!("{column} IS {}NULL", if *negated { "NOT " } else { "" })
            }
            Filter::InList { list } => {
                let ph = bind(&Bound::Text(list.clone()), params);
                format!(
                    "user_id IN (SELECT m.user_id FROM idx_list_members m \
                     WHERE m.tenant_id = {} AND m.list_id = {ph})",
                    d.placeholder(1)
                )
            }
            Filter::Eligible(Channel::Email) => {
                "(email IS NOT NULL AND email <> '' AND email_opt_in = TRUE)".into()
            }
            Filter::Eligible(Channel::Sms) => {
                "(mobile_number IS NOT NULL AND mobile_number <> '' AND sms_opt_in = TRUE)".into()
            }
            Filter::Eligible(Channel::Push) => format!(
                "user_id IN (SELECT dv.user_id FROM idx_devices dv \
                 WHERE dv.tenant_id = {} AND dv.push_enabled = TRUE)",
                d.placeholder(1)
            ),
            Filter::OwnedBy(inner) => {
                let inner = inner.sql(d, first, params);
                format!(
                    "user_id IN (SELECT pu.user_id FROM idx_users pu \
                     WHERE pu.tenant_id = {} AND {inner})",
                    d.placeholder(1)
                )
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
        fn attribute(&self, name: &str, _ty: ColumnType) -> String {
            format!("A({name})")
        }
    }

    #[test]
    fn lists_are_bounded_together() {
        let list =
            |n: usize| json!({"field": "country", "op": "in", "value": vec![json!("NL"); n]});
        let ten = json!({ "any": vec![list(1000); 10] });
        assert!(parse(&USERS, &ten, "segment", Timestamp::UNIX_EPOCH).is_ok());
        let eleven = json!({ "any": [ten, {"not": list(1)}] });
        let e = parse(&USERS, &eleven, "segment", Timestamp::UNIX_EPOCH).unwrap_err();
        assert!(
            e.to_string()
                .contains("at most 10000 values in all the lists together, got 10001"),
            "{e}"
        );
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
    fn attributes_and_lists_bind_their_names() {
        let attrs = vec![
            Attribute {
                name: "ltv".into(),
                ty: AttributeType::Number,
                enabled: true,
                pii: false,
            },
            Attribute {
                name: "signup".into(),
                ty: AttributeType::Date,
                enabled: false,
                pii: false,
            },
        ];
        let seg = json!({"all": [
            {"field": "ltv", "op": "gte", "value": 100},
            {"field": "signup", "op": "before", "value": "2025-01-01"},
            {"field": "user_id", "op": "in_list", "value": "vip"}
        ]});
        let f = parse_with(&USERS, &attrs, &seg, "s", Timestamp::UNIX_EPOCH).unwrap();
        let (sql, params) = f.to_sql(&Pg, 2);
        assert_eq!(
            sql,
            "(A($2) >= $3 AND A($4) < $5 AND user_id IN (SELECT m.user_id FROM idx_list_members m WHERE m.tenant_id = $1 AND m.list_id = $6))"
        );
        assert_eq!(
            params,
            [
                Bound::Text("ltv".into()),
                Bound::Float(100.0),
                Bound::Text("signup".into()),
                Bound::Text("2025-01-01T00:00:00Z".into()),
                Bound::Text("vip".into())
            ]
        );
        // Attributes are profile fields only.
        let e = parse_with(
            &crate::index::DEVICES,
            &attrs,
            &json!({"field": "ltv", "op": "eq", "value": 1}),
            "s",
            Timestamp::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(e.path, "s.field");
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
                json!({"field": "email", "op": "in_list", "value": "vip"}),
                "segment.field",
                "its field is user_id",
            ),
            (
                json!({"field": "user_id", "op": "in_list", "value": 1}),
                "segment.value",
                "needs a list id",
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
            (
                json!({"field": "email", "op": "is_null", "value": false}),
                "segment.value",
                "takes no value",
            ),
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
