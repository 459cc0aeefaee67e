//! Export writers: CSV, JSON (an array, one object per line) and JSON lines,
//! encoded into a buffer the caller drains in chunks.

use std::io::Write;

use datask_core::index::{ColumnType, IndexDef, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
    JsonLines,
}

impl ExportFormat {
    pub const NAMES: &'static [&'static str] = &["csv", "json", "jsonl"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(ExportFormat::Csv),
            "json" => Some(ExportFormat::Json),
            "jsonl" => Some(ExportFormat::JsonLines),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::JsonLines => "jsonl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::JsonLines => "application/x-ndjson",
        }
    }
}

pub struct ExportWriter {
    format: ExportFormat,
    index: &'static IndexDef,
    buf: Vec<u8>,
    rows: u64,
    /// Quoted JSON keys (`"name":`), made once.
    keys: Vec<Vec<u8>>,
}

/// Formats an instant as RFC 3339 in UTC, with as many fractional digits
/// as it needs (`2026-01-02T03:04:05Z`, `…05.123Z`).
pub fn format_time(micros: i64) -> String {
    let mut out = Vec::with_capacity(32);
    write_time(&mut out, micros);
    String::from_utf8(out).expect("ASCII")
}

fn write_time(buf: &mut Vec<u8>, micros: i64) {
    let _ = match jiff::Timestamp::from_microsecond(micros) {
        Ok(t) => write!(buf, "{t}"),
        // Outside years -9999..=9999: cannot come from an import.
        Err(_) => write!(buf, "{micros}"),
    };
}

/// A number as the shortest text that reads back to the same `f64`:
/// positional in the usual range (`10.5`, `3`), exponent outside it
/// (`1e+300`, `1.5e-7`) so huge and tiny values stay short.
fn write_number(buf: &mut Vec<u8>, f: f64) {
    if !f.is_finite() {
        // Never produced by an import; a CSV cell cannot say it.
        return;
    }
    if f == 0.0 || (1e-5..1e16).contains(&f.abs()) {
        let _ = write!(buf, "{f}");
    } else {
        let _ = serde_json::to_writer(&mut *buf, &f);
    }
}

fn csv_field(buf: &mut Vec<u8>, s: &str) {
    if crate::import::needs_quotes(s.as_bytes()) {
        buf.push(b'"');
        for (i, part) in s.split('"').enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"\"\"");
            }
            buf.extend_from_slice(part.as_bytes());
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
}

/// A stored JSON object into a JSON document: as written when it is valid
/// and on one line, compacted when it spans lines, as a string when it is
/// not JSON at all.
fn write_json_text(buf: &mut Vec<u8>, s: &str) {
    match serde_json::from_str::<&serde_json::value::RawValue>(s) {
        Ok(raw) if !raw.get().bytes().any(|b| b == b'\n' || b == b'\r') => {
            buf.extend_from_slice(raw.get().as_bytes());
        }
        Ok(_) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(v) => {
                let _ = serde_json::to_writer(&mut *buf, &v);
            }
            Err(_) => {
                let _ = serde_json::to_writer(&mut *buf, s);
            }
        },
        Err(_) => {
            let _ = serde_json::to_writer(&mut *buf, s);
        }
    }
}

impl ExportWriter {
    pub fn new(format: ExportFormat, index: &'static IndexDef) -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        match format {
            ExportFormat::Csv => {
                let names: Vec<&str> = index.columns.iter().map(|c| c.name).collect();
                buf.extend_from_slice(names.join(",").as_bytes());
                buf.push(b'\n');
            }
            ExportFormat::Json => buf.push(b'['),
            ExportFormat::JsonLines => {}
        }
        let keys = index
            .columns
            .iter()
            .map(|c| {
                let mut k = serde_json::to_vec(c.name).expect("a string");
                k.push(b':');
                k
            })
            .collect();
        ExportWriter {
            format,
            index,
            buf,
            rows: 0,
            keys,
        }
    }

    /// One row, values in the index's column order (all of its columns).
    pub fn write_row(&mut self, values: &[Value]) {
        debug_assert_eq!(values.len(), self.index.columns.len());
        match self.format {
            ExportFormat::Csv => {
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    match v {
                        Value::Null => {}
                        Value::Text(s) | Value::Json(s) => csv_field(&mut self.buf, s),
                        Value::Integer(n) => {
                            let _ = write!(self.buf, "{n}");
                        }
                        Value::Number(f) => write_number(&mut self.buf, *f),
                        Value::Boolean(b) => {
                            self.buf
                                .extend_from_slice(if *b { b"true" } else { b"false" })
                        }
                        Value::Time(t) => write_time(&mut self.buf, *t),
                    }
                }
                self.buf.push(b'\n');
            }
            ExportFormat::Json | ExportFormat::JsonLines => {
                if self.format == ExportFormat::Json {
                    self.buf
                        .extend_from_slice(if self.rows == 0 { b"\n" } else { b",\n" });
                }
                self.buf.push(b'{');
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    self.buf.extend_from_slice(&self.keys[i]);
                    self.json_value(i, v);
                }
                self.buf.push(b'}');
                if self.format == ExportFormat::JsonLines {
                    self.buf.push(b'\n');
                }
            }
        }
        self.rows += 1;
    }

    fn json_value(&mut self, column: usize, v: &Value) {
        match v {
            Value::Null => self.buf.extend_from_slice(b"null"),
            Value::Text(s) => {
                let _ = serde_json::to_writer(&mut self.buf, s);
            }
            Value::Json(s) => write_json_text(&mut self.buf, s),
            Value::Integer(n) => {
                let _ = write!(self.buf, "{n}");
            }
            Value::Number(f) => {
                let _ = serde_json::to_writer(&mut self.buf, f);
            }
            Value::Boolean(b) => self
                .buf
                .extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Time(t) => {
                debug_assert_eq!(self.index.columns[column].ty, ColumnType::Time);
                self.buf.push(b'"');
                write_time(&mut self.buf, *t);
                self.buf.push(b'"');
            }
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Drains what is buffered.
    pub fn take_chunk(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20))
    }

    /// The rest, closing the JSON array.
    pub fn finish(mut self) -> Vec<u8> {
        if self.format == ExportFormat::Json {
            self.buf
                .extend_from_slice(if self.rows == 0 { b"]\n" } else { b"\n]\n" });
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{ImportReader, InputFormat};
    use datask_core::index::{ALL, PRODUCTS, USERS};

    fn product(id: &str, price: f64, active: Option<bool>) -> Vec<Value> {
        vec![
            Value::Text(id.into()),
            Value::Text("A \"quoted\", name".into()),
            Value::Null,
            Value::Number(price),
            Value::Text("EUR".into()),
            active.map(Value::Boolean).unwrap_or(Value::Null),
            Value::Time(1_767_225_600_000_000),
        ]
    }

    fn all(format: ExportFormat) -> String {
        let mut w = ExportWriter::new(format, &PRODUCTS);
        w.write_row(&product("p1", 10.5, Some(true)));
        assert!(w.buffered() > 0);
        let mut out = w.take_chunk();
        assert_eq!(w.buffered(), 0);
        w.write_row(&product("p2", 3.0, None));
        assert_eq!(w.rows(), 2);
        out.extend(w.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_by_name() {
        for name in ExportFormat::NAMES {
            let f = ExportFormat::parse(name).unwrap();
            assert_eq!(f.extension(), *name);
        }
        assert_eq!(ExportFormat::parse("CSV"), None);
        assert_eq!(ExportFormat::parse("xml"), None);
        assert_eq!(ExportFormat::Csv.content_type(), "text/csv; charset=utf-8");
        assert_eq!(ExportFormat::Json.content_type(), "application/json");
        assert_eq!(
            ExportFormat::JsonLines.content_type(),
            "application/x-ndjson"
        );
    }

    #[test]
    fn csv_output() {
        assert_eq!(
            all(ExportFormat::Csv),
            "product_id,name,category,price,currency,active,created_at\n\
             p1,\"A \"\"quoted\"\", name\",,10.5,EUR,true,2026-01-01T00:00:00Z\n\
             p2,\"A \"\"quoted\"\", name\",,3,EUR,,2026-01-01T00:00:00Z\n"
        );
        assert_eq!(
            ExportWriter::new(ExportFormat::Csv, &PRODUCTS).finish(),
            b"product_id,name,category,price,currency,active,created_at\n"
        );
    }

    #[test]
    fn json_and_jsonl_output() {
        let line1 = r#"{"product_id":"p1","name":"A \"quoted\", name","category":null,"price":10.5,"currency":"EUR","active":true,"created_at":"2026-01-01T00:00:00Z"}"#;
        let line2 = r#"{"product_id":"p2","name":"A \"quoted\", name","category":null,"price":3.0,"currency":"EUR","active":null,"created_at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(
            all(ExportFormat::Json),
            format!("[\n{line1},\n{line2}\n]\n")
        );
        assert_eq!(all(ExportFormat::JsonLines), format!("{line1}\n{line2}\n"));
        let parsed: Vec<serde_json::Value> =
            serde_json::from_str(&all(ExportFormat::Json)).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            ExportWriter::new(ExportFormat::Json, &PRODUCTS).finish(),
            b"[]\n"
        );
        assert!(
            ExportWriter::new(ExportFormat::JsonLines, &PRODUCTS)
                .finish()
                .is_empty()
        );
    }

    fn user(created: i64, attributes: &str) -> Vec<Value> {
        let mut row = vec![Value::Null; USERS.columns.len()];
        row[0] = Value::Text("u1".into());
        row[11] = Value::Time(created);
        row[13] = Value::Json(attributes.into());
        row
    }

    #[test]
    fn times_and_json_columns() {
        let pretty = "{\n  \"tier\": \"gold\",\n  \"n\": [1, 2]\n}";
        let mut w = ExportWriter::new(ExportFormat::Csv, &USERS);
        w.write_row(&user(1_767_323_045_123_000, r#"{"a": "x,y"}"#));
        w.write_row(&user(-1, pretty));
        let csv = String::from_utf8(w.finish()).unwrap();
        assert_eq!(
            csv.lines().skip(1).collect::<Vec<_>>(),
            [
                "u1,,,,,,,,,,,2026-01-02T03:04:05.123Z,,\"{\"\"a\"\": \"\"x,y\"\"}\"",
                "u1,,,,,,,,,,,1969-12-31T23:59:59.999999Z,,\"{",
                "  \"\"tier\"\": \"\"gold\"\",",
                "  \"\"n\"\": [1, 2]",
                "}\"",
            ]
        );
        let mut w = ExportWriter::new(ExportFormat::JsonLines, &USERS);
        w.write_row(&user(0, r#"{"a": "x,y"}"#));
        w.write_row(&user(0, pretty));
        w.write_row(&user(0, "not json"));
        let attributes: Vec<String> = String::from_utf8(w.finish())
            .unwrap()
            .lines()
            .map(|l| l.split("\"attributes\":").nth(1).unwrap().to_string())
            .collect();
        assert_eq!(
            attributes,
            [
                r#"{"a": "x,y"}}"#,
                r#"{"tier":"gold","n":[1,2]}}"#,
                r#""not json"}"#
            ]
        );
    }

    #[test]
    fn numbers_are_short_and_exact() {
        let cases = [
            (3.0, "3"),
            (-0.5, "-0.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123_456_789.125, "123456789.125"),
            (1e300, "1e+300"),
            (-1.5e-7, "-1.5e-7"),
            (0.0, "0"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (f, text) in cases {
            let mut buf = Vec::new();
            write_number(&mut buf, f);
            assert_eq!(String::from_utf8(buf).unwrap(), text);
            assert_eq!(text.parse::<f64>().unwrap(), f);
        }
    }

    /// A small deterministic generator for round-trip values.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }

        fn value(&mut self, ty: ColumnType, key: bool) -> Value {
            if !key && self.next().is_multiple_of(5) {
                return Value::Null;
            }
            let texts = [
                "plain",
                " padded ",
                "comma, inside",
                "a \"quote\"",
                "line\nbreak",
                "crlf\r\nbreak",
                "ünïcødé ✓",
                "'single'",
                "trailing\n",
                "#hash",
            ];
            match ty {
                ColumnType::Text => {
                    Value::Text(format!("{}{}", self.pick(&texts), self.next() % 1000))
                }
                ColumnType::Integer => Value::Integer(self.next() as i64 >> (self.next() % 64)),
                ColumnType::Number => {
                    let f = f64::from_bits(self.next());
                    Value::Number(if f.is_finite() {
                        f
                    } else {
                        self.next() as f64 / 7.0
                    })
                }
                ColumnType::Boolean => Value::Boolean(self.next().is_multiple_of(2)),
                ColumnType::Time => {
                    let span = 253_402_214_400_000_000u64; // up to 9999-12-30
                    Value::Time((self.next() % (2 * span)) as i64 - span as i64 + 86_400_000_000)
                }
                ColumnType::Json => Value::Json(
                    self.pick(&[
                        "{}",
                        r#"{"tier":"gold","n":[1,2.5,null]}"#,
                        r#"{"s": "a,\"b\"\nc", "nested": {"x": true}}"#,
                    ])
                    .to_string(),
                ),
            }
        }
    }

    #[test]
    fn exports_reimport_losslessly() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for index in ALL {
            let rows: Vec<Vec<Value>> = (0..300)
                .map(|_| {
                    index
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| g.value(c.ty, index.is_key(i)))
                        .collect()
                })
                .collect();
            for (format, input) in [
                (ExportFormat::Csv, InputFormat::Csv),
                (ExportFormat::JsonLines, InputFormat::JsonLines),
            ] {
                let mut w = ExportWriter::new(format, index);
                let mut bytes = Vec::new();
                for row in &rows {
                    w.write_row(row);
                    if w.buffered() > 4096 {
                        bytes.extend(w.take_chunk());
                    }
                }
                bytes.extend(w.finish());
                let r = ImportReader::open(&bytes[..], input, index).unwrap();
                let all: Vec<usize> = (0..index.columns.len()).collect();
                assert_eq!(r.columns(), all, "{}", index.name);
                let back: Vec<Vec<Value>> = r.map(|r| r.unwrap().outcome.unwrap()).collect();
                assert_eq!(back, rows, "{} {format:?}", index.name);
            }
        }
    }
}
