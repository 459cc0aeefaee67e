//! One cell's text (or JSON value) to a typed value, with the problem named.
//!
//! The common shapes (plain numbers, `true`/`false`, `YYYY-MM-DD[ HH:MM:SS]`,
//! RFC 3339 with `Z` or `±HH:MM`) take allocation-free fast paths; anything
//! else falls back to jiff / serde_json, which define what is accepted.

use datask_core::index::{Column, ColumnType, Value};

/// What a cell is checked against: an index column, or a custom attribute
/// (whose name is the tenant's, not compiled in).
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub ty: ColumnType,
    pub required: bool,
}

impl<'a> From<&'a Column> for Spec<'a> {
    fn from(c: &'a Column) -> Self {
        Spec {
            name: c.name,
            ty: c.ty,
            required: c.required,
        }
    }
}

use crate::import::RowProblem;

/// How much of a bad value a message repeats.
const SHOWN_CHARS: usize = 40;

/// The longest text value (UTF-8 bytes) a cell may hold. Far above any
/// name, address or identifier, far below the record limit: a 30 MB
/// `first_name` is a broken file, not a profile.
pub const MAX_TEXT_BYTES: usize = 64 << 10;

/// The longest JSON object (an `attributes` cell, as written) a cell may hold.
pub const MAX_JSON_BYTES: usize = 1 << 20;

fn too_long(col: &Spec, len: usize, max: usize) -> RowProblem {
    RowProblem {
        code: "value_too_long",
        column: Some(col.name.to_string()),
        message: format!(
            "Column '{}' has a value of {len} bytes; at most {max} are accepted",
            col.name
        ),
    }
}

/// The size check every kept text or JSON value passes.
fn within(col: &Spec, len: usize) -> Result<(), RowProblem> {
    let max = if col.ty == ColumnType::Json {
        MAX_JSON_BYTES
    } else {
        MAX_TEXT_BYTES
    };
    if len > max {
        return Err(too_long(col, len, max));
    }
    Ok(())
}

fn shown(raw: &str) -> String {
    match raw.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &raw[..at]),
        None => raw.to_string(),
    }
}

fn expected(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text => "a string",
        ColumnType::Integer => "an integer",
        ColumnType::Number => "a number",
        ColumnType::Boolean => "true or false",
        ColumnType::Time => "a date or time such as 2026-01-02 or 2026-01-02T03:04:05Z",
        ColumnType::Json => "a JSON object",
    }
}

fn invalid(col: &Spec, raw: &str) -> RowProblem {
    RowProblem {
        code: "invalid_value",
        column: Some(col.name.to_string()),
        message: format!(
            "Column '{}' has '{}', expected {}",
            col.name,
            shown(raw),
            expected(col.ty)
        ),
    }
}

fn missing(col: &Spec, is_key: bool) -> RowProblem {
    if is_key {
        RowProblem {
            code: "missing_identifier",
            column: Some(col.name.to_string()),
            message: format!("Column '{}' is empty: it identifies the row", col.name),
        }
    } else {
        RowProblem {
            code: "missing_value",
            column: Some(col.name.to_string()),
            message: format!("Column '{}' is required but empty", col.name),
        }
    }
}

fn null(col: &Spec, is_key: bool) -> Result<Value, RowProblem> {
    if is_key || col.required {
        Err(missing(col, is_key))
    } else {
        Ok(Value::Null)
    }
}

/// A CSV cell (or a JSON string). Empty is null, except for the key (and
/// any other required column).
pub fn parse_text(col: &Column, is_key: bool, raw: &str) -> Result<Value, RowProblem> {
    text_cell(&Spec::from(col), is_key, raw)
}

pub(crate) fn text_cell(col: &Spec, is_key: bool, raw: &str) -> Result<Value, RowProblem> {
    if raw.is_empty() {
        return null(col, is_key);
    }
    if col.ty == ColumnType::Text {
        let blank = |b: &u8| b.is_ascii_whitespace();
        // Text is kept as is; only a key of nothing but spaces is empty.
        if is_key && raw.as_bytes().first().is_some_and(blank) && raw.trim().is_empty() {
            return null(col, is_key);
        }
        within(col, raw.len())?;
        return Ok(Value::Text(raw.to_string()));
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return null(col, is_key);
    }
    Ok(match col.ty {
        ColumnType::Text => unreachable!("handled above"),
        ColumnType::Integer => Value::Integer(trimmed.parse().map_err(|_| invalid(col, raw))?),
        ColumnType::Number => match trimmed.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Number(f),
            _ => return Err(invalid(col, raw)),
        },
        ColumnType::Boolean => {
            Value::Boolean(parse_bool(trimmed).ok_or_else(|| invalid(col, raw))?)
        }
        ColumnType::Time => Value::Time(parse_time(trimmed).ok_or_else(|| invalid(col, raw))?),
        ColumnType::Json => {
            within(col, trimmed.len())?;
            if is_json_object(trimmed) {
                // Kept as written: validated, not reformatted.
                Value::Json(trimmed.to_string())
            } else {
                return Err(invalid(col, raw));
            }
        }
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    const TRUE: [&str; 3] = ["true", "1", "yes"];
    const FALSE: [&str; 3] = ["false", "0", "no"];
    if TRUE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|f| s.eq_ignore_ascii_case(f)) {
        Some(false)
    } else {
        None
    }
}

/// Syntactically valid JSON whose top level is an object; nothing is built.
fn is_json_object(s: &str) -> bool {
    s.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// A time: RFC 3339, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DD HH:MM:SS`
/// (UTC), as microseconds since the epoch.
pub fn parse_time(raw: &str) -> Option<i64> {
    fast_time(raw.as_bytes()).or_else(|| jiff_time(raw))
}

/// What jiff accepts; the reference for the fast path.
fn jiff_time(raw: &str) -> Option<i64> {
    if let Ok(t) = raw.parse::<jiff::Timestamp>() {
        return Some(t.as_microsecond());
    }
    let utc = |dt: jiff::civil::DateTime| {
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_microsecond())
    };
    if let Ok(dt) = raw.parse::<jiff::civil::DateTime>() {
        return utc(dt);
    }
    raw.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| utc(d.to_datetime(jiff::civil::Time::midnight())))
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Some(n)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The strict common shapes; `None` means "ask jiff", never "invalid".
fn fast_time(s: &[u8]) -> Option<i64> {
    if s.len() < 10 || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&s[..4])?, digits(&s[5..7])?, digits(&s[8..10])?);
    // Years 1..=9998 keep every offset inside jiff's timestamp range.
    if !(1..=9998).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let mut micros = days_from_civil(y, m, d) * 86_400_000_000;
    if s.len() == 10 {
        return Some(micros);
    }
    if s.len() < 19 || !matches!(s[10], b'T' | b' ') || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    );
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    micros += (h * 3600 + mi * 60 + sec) * 1_000_000;
    let mut rest = &s[19..];
    if let [b'.', frac @ ..] = rest {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 6 {
            return None;
        }
        micros += digits(&frac[..n])? * 10i64.pow(6 - n as u32);
        rest = &frac[n..];
    }
    match rest {
        [] | [b'Z'] => Some(micros),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 3600 + om * 60) * 1_000_000;
            Some(if *sign == b'+' {
                micros - offset
            } else {
                micros + offset
            })
        }
        _ => None,
    }
}

/// A JSON-lines value, given as its JSON text as delimited by the line's
/// parser (`None` when the key is absent). Strings are read like CSV cells;
/// numbers, booleans and objects must fit the column; `null` is null.
pub fn parse_json(col: &Column, is_key: bool, text: Option<&str>) -> Result<Value, RowProblem> {
    json_cell(&Spec::from(col), is_key, text)
}

pub(crate) fn json_cell(col: &Spec, is_key: bool, text: Option<&str>) -> Result<Value, RowProblem> {
    let Some(text) = text else {
        return null(col, is_key);
    };
    match text.as_bytes().first() {
        None | Some(b'n') => null(col, is_key),
        Some(b'"') => match serde_json::from_str::<&str>(text) {
            Ok(s) => text_cell(col, is_key, s),
            // Escapes: the unescaped text is a new string.
            Err(_) => match serde_json::from_str::<String>(text) {
                Ok(s) => text_cell(col, is_key, &s),
                Err(_) => Err(invalid(col, text)),
            },
        },
        Some(b't' | b'f') if col.ty == ColumnType::Boolean => Ok(Value::Boolean(text == "true")),
        Some(b'{') if col.ty == ColumnType::Json => {
            within(col, text.len())?;
            Ok(Value::Json(text.to_string()))
        }
        Some(b'-' | b'0'..=b'9') => json_number(col, text),
        Some(_) => Err(invalid(col, text)),
    }
}

/// A JSON number (its exact text) for a column.
fn json_number(col: &Spec, text: &str) -> Result<Value, RowProblem> {
    let bad = || invalid(col, text);
    match col.ty {
        // Kept as written, so `123` as an identifier is "123".
        ColumnType::Text => {
            within(col, text.len())?;
            Ok(Value::Text(text.to_string()))
        }
        ColumnType::Integer => match text.parse::<i64>() {
            Ok(n) => Ok(Value::Integer(n)),
            // `5.0` or `5e3` when it is a whole number that fits exactly.
            Err(_) => match text.parse::<f64>() {
                Ok(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => {
                    Ok(Value::Integer(f as i64))
                }
                _ => Err(bad()),
            },
        },
        ColumnType::Number => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Number(f)),
            _ => Err(bad()),
        },
        ColumnType::Boolean => match text {
            "1" => Ok(Value::Boolean(true)),
            "0" => Ok(Value::Boolean(false)),
            _ => Err(bad()),
        },
        // Unix seconds.
        ColumnType::Time => text
            .parse::<i64>()
            .ok()
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map(|t| Value::Time(t.as_microsecond()))
            .ok_or_else(bad),
        ColumnType::Json => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datask_core::index::{PRODUCT_VARIANTS, PRODUCTS, TRANSACTIONS, USERS};

    fn col(index: &'static datask_core::index::IndexDef, name: &str) -> &'static Column {
        index.column(name).unwrap().1
    }

    fn cell(index: &'static datask_core::index::IndexDef, name: &str, raw: &str) -> Value {
        parse_text(col(index, name), false, raw).unwrap()
    }

    fn bad(index: &'static datask_core::index::IndexDef, name: &str, raw: &str) -> String {
        let p = parse_text(col(index, name), false, raw).unwrap_err();
        assert_eq!((p.code, p.column.as_deref()), ("invalid_value", Some(name)));
        p.message
    }

    #[test]
    fn values_have_a_size_limit() {
        let name = col(&USERS, "first_name");
        let at_limit = "a".repeat(MAX_TEXT_BYTES);
        assert!(parse_text(name, false, &at_limit).is_ok());
        let over = "é".repeat(MAX_TEXT_BYTES / 2 + 1);
        for got in [
            parse_text(name, false, &over),
            json(name, &format!("\"{over}\"")),
            json(name, &"1".repeat(MAX_TEXT_BYTES + 2)),
        ] {
            let p = got.unwrap_err();
            assert_eq!(
                (p.code, p.column.as_deref(), p.message.as_str()),
                (
                    "value_too_long",
                    Some("first_name"),
                    "Column 'first_name' has a value of 65538 bytes; at most 65536 are accepted"
                )
            );
        }
        let attributes = col(&USERS, "attributes");
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_JSON_BYTES));
        assert_eq!(
            parse_text(attributes, false, &big).unwrap_err().code,
            "value_too_long"
        );
        assert_eq!(json(attributes, &big).unwrap_err().code, "value_too_long");
    }

    #[test]
    fn text_is_kept_as_is() {
        assert_eq!(
            cell(&USERS, "email", " a@b.c "),
            Value::Text(" a@b.c ".into())
        );
        assert_eq!(cell(&USERS, "email", ""), Value::Null);
        let key = col(&USERS, "user_id");
        for empty in ["", "  "] {
            let p = parse_text(key, true, empty).unwrap_err();
            assert_eq!(
                (p.code, p.column.as_deref()),
                ("missing_identifier", Some("user_id"))
            );
        }
        assert_eq!(
            parse_text(key, true, "u1").unwrap(),
            Value::Text("u1".into())
        );
    }

    #[test]
    fn integers() {
        assert_eq!(cell(&PRODUCT_VARIANTS, "stock", "42"), Value::Integer(42));
        assert_eq!(cell(&PRODUCT_VARIANTS, "stock", " -7 "), Value::Integer(-7));
        assert_eq!(cell(&PRODUCT_VARIANTS, "stock", " "), Value::Null);
        assert_eq!(
            bad(&PRODUCT_VARIANTS, "stock", "1.5"),
            "Column 'stock' has '1.5', expected an integer"
        );
        bad(&PRODUCT_VARIANTS, "stock", "99999999999999999999");
        bad(&PRODUCT_VARIANTS, "stock", "12abc");
    }

    #[test]
    fn numbers() {
        assert_eq!(cell(&TRANSACTIONS, "amount", "10.50"), Value::Number(10.5));
        assert_eq!(cell(&TRANSACTIONS, "amount", "-3"), Value::Number(-3.0));
        assert_eq!(cell(&TRANSACTIONS, "amount", "1e3"), Value::Number(1000.0));
        assert_eq!(cell(&TRANSACTIONS, "amount", ""), Value::Null);
        assert_eq!(
            bad(&TRANSACTIONS, "amount", "abc"),
            "Column 'amount' has 'abc', expected a number"
        );
        for raw in ["inf", "NaN", "1,5", "€3"] {
            bad(&TRANSACTIONS, "amount", raw);
        }
        let long = "x".repeat(100);
        assert_eq!(
            bad(&TRANSACTIONS, "amount", &long),
            format!(
                "Column 'amount' has '{}…', expected a number",
                "x".repeat(40)
            )
        );
    }

    #[test]
    fn booleans() {
        for (raw, b) in [
            ("true", true),
            ("YES", true),
            ("1", true),
            ("True", true),
            ("False", false),
            ("no", false),
            ("0", false),
            (" FALSE ", false),
        ] {
            assert_eq!(cell(&PRODUCTS, "active", raw), Value::Boolean(b), "{raw}");
        }
        assert_eq!(
            bad(&PRODUCTS, "active", "maybe"),
            "Column 'active' has 'maybe', expected true or false"
        );
        bad(&PRODUCTS, "active", "2");
    }

    #[test]
    fn times() {
        let t = |raw| cell(&USERS, "created_at", raw);
        assert_eq!(t("1970-01-02"), Value::Time(86_400_000_000));
        assert_eq!(t("1970-01-01T00:00:01Z"), Value::Time(1_000_000));
        assert_eq!(t("1970-01-01 00:01:00"), Value::Time(60_000_000));
        assert_eq!(t("1970-01-01T02:00:00+02:00"), Value::Time(0));
        assert_eq!(t("1970-01-01T00:00:00.25Z"), Value::Time(250_000));
        assert_eq!(t("1969-12-31T23:59:59Z"), Value::Time(-1_000_000));
        assert_eq!(
            t("2026-01-02T03:04:05Z"),
            Value::Time(1_767_323_045_000_000)
        );
        // Shapes only jiff knows still parse.
        assert_eq!(t("1970-01-01t00:00:01z"), Value::Time(1_000_000));
        assert_eq!(t("1970-01-01T00:00:00.000001500Z"), Value::Time(1));
        for raw in [
            "yesterday",
            "2026-02-30",
            "2026-13-01",
            "2026-01-02T25:00:00Z",
            "1767323045",
        ] {
            assert!(
                bad(&USERS, "created_at", raw).ends_with(
                    "expected a date or time such as 2026-01-02 or 2026-01-02T03:04:05Z"
                ),
                "{raw}"
            );
        }
    }

    /// Wherever the fast path answers, it answers as jiff does.
    #[test]
    fn fast_times_agree_with_jiff() {
        let mut checked = 0;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20_000 {
            let y = [1, 4, 100, 1600, 1900, 1969, 1970, 2000, 2024, 2100, 9998][next(11) as usize];
            let base = format!("{y:04}-{:02}-{:02}", next(13), next(32));
            let time = format!("{:02}:{:02}:{:02}", next(25), next(61), next(61));
            let sep = [" ", "T"][next(2) as usize];
            let frac = ["", ".5", ".123456", ".000001"][next(4) as usize];
            let zone = ["", "Z", "+01:30", "-11:59", "+00:00", "-00:00"][next(6) as usize];
            for s in [base.clone(), format!("{base}{sep}{time}{frac}{zone}")] {
                if let Some(fast) = fast_time(s.as_bytes()) {
                    assert_eq!(Some(fast), jiff_time(&s), "{s}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    #[test]
    fn json_objects() {
        let attrs = col(&USERS, "attributes");
        assert_eq!(
            parse_text(attrs, false, r#" {"a": 1} "#).unwrap(),
            Value::Json(r#"{"a": 1}"#.into())
        );
        for raw in ["[1]", "{", "{\"a\":}", "\"x\"", "{} {}"] {
            assert_eq!(
                parse_text(attrs, false, raw).unwrap_err().message,
                format!("Column 'attributes' has '{raw}', expected a JSON object")
            );
        }
    }

    fn json(c: &Column, text: &str) -> Result<Value, RowProblem> {
        parse_json(c, false, Some(text))
    }

    #[test]
    fn json_values() {
        let stock = col(&PRODUCT_VARIANTS, "stock");
        assert_eq!(json(stock, "5").unwrap(), Value::Integer(5));
        assert_eq!(json(stock, "\"6\"").unwrap(), Value::Integer(6));
        assert_eq!(json(stock, "7.0").unwrap(), Value::Integer(7));
        assert_eq!(json(stock, "null").unwrap(), Value::Null);
        assert_eq!(parse_json(stock, false, None).unwrap(), Value::Null);
        assert_eq!(
            json(stock, "true").unwrap_err().message,
            "Column 'stock' has 'true', expected an integer"
        );
        assert!(json(stock, "1.5").is_err());
        assert!(json(stock, "[1]").is_err());
        let price = col(&PRODUCTS, "price");
        assert_eq!(json(price, "1.25").unwrap(), Value::Number(1.25));
        assert_eq!(json(price, "\"2.5\"").unwrap(), Value::Number(2.5));
        assert!(json(price, "{}").is_err());
        let active = col(&PRODUCTS, "active");
        assert_eq!(json(active, "false").unwrap(), Value::Boolean(false));
        assert_eq!(json(active, "1").unwrap(), Value::Boolean(true));
        assert_eq!(json(active, "\"yes\"").unwrap(), Value::Boolean(true));
        let name = col(&PRODUCTS, "name");
        assert_eq!(
            json(name, "\"a\\\"b\\u00e9\"").unwrap(),
            Value::Text("a\"bé".into())
        );
        assert_eq!(json(name, "12").unwrap(), Value::Text("12".into()));
        assert!(json(name, "true").is_err());
        let created = col(&PRODUCTS, "created_at");
        assert_eq!(json(created, "60").unwrap(), Value::Time(60_000_000));
        assert_eq!(
            json(created, "\"1970-01-01T00:01:00Z\"").unwrap(),
            Value::Time(60_000_000)
        );
        assert!(json(created, "1.5").is_err());
        let attrs = col(&USERS, "attributes");
        assert_eq!(
            json(attrs, r#"{"tier": "gold"}"#).unwrap(),
            Value::Json(r#"{"tier": "gold"}"#.into())
        );
        assert_eq!(
            json(attrs, r#""{\"a\":1}""#).unwrap(),
            Value::Json(r#"{"a":1}"#.into())
        );
        assert!(json(attrs, "[1]").is_err());
        let key = col(&PRODUCTS, "product_id");
        assert_eq!(
            parse_json(key, true, None).unwrap_err().code,
            "missing_identifier"
        );
        assert_eq!(
            parse_json(key, true, Some("42")).unwrap(),
            Value::Text("42".into())
        );
    }
}
