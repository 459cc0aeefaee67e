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

/// Formats an instant as RFC 3339 in UTC (fractions only when present).
pub fn format_time(micros: i64) -> String {
    jiff::Timestamp::from_microsecond(micros)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| micros.to_string())
}

fn csv_field(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        buf.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                buf.push(b'"');
            }
            buf.push(b);
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(s.as_bytes());
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

    /// One row, values in the index's column order.
    pub fn write_row(&mut self, values: &[Value]) {
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
                        Value::Number(f) => {
                            let _ = write!(self.buf, "{f}");
                        }
                        Value::Boolean(b) => {
                            self.buf
                                .extend_from_slice(if *b { b"true" } else { b"false" })
                        }
                        Value::Time(t) => self.buf.extend_from_slice(format_time(*t).as_bytes()),
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
            Value::Json(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(j) => {
                    let _ = serde_json::to_writer(&mut self.buf, &j);
                }
                Err(_) => {
                    let _ = serde_json::to_writer(&mut self.buf, s);
                }
            },
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
                let _ = serde_json::to_writer(&mut self.buf, &format_time(*t));
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
    use datask_core::index::{PRODUCTS, USERS};

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
        let mut out = w.take_chunk();
        w.write_row(&product("p2", 3.0, None));
        out.extend(w.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_output() {
        assert_eq!(
            all(ExportFormat::Csv),
            "product_id,name,category,price,currency,active,created_at\n\
             p1,\"A \"\"quoted\"\", name\",,10.5,EUR,true,2026-01-01T00:00:00Z\n\
             p2,\"A \"\"quoted\"\", name\",,3,EUR,,2026-01-01T00:00:00Z\n"
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
    }

    #[test]
    fn csv_export_reimports_losslessly() {
        let row = vec![
            Value::Text("u1".into()),
            Value::Text("a@b.c".into()),
            Value::Null,
            Value::Text("line\nbreak".into()),
            Value::Null,
            Value::Text("NL".into()),
            Value::Null,
            Value::Null,
            Value::Boolean(true),
            Value::Boolean(false),
            Value::Null,
            Value::Time(1_700_000_000_123_456),
            Value::Null,
            Value::Json(r#"{"tier":"gold","n":[1,2]}"#.into()),
        ];
        let mut w = ExportWriter::new(ExportFormat::Csv, &USERS);
        w.write_row(&row);
        let bytes = w.finish();
        let mut r = ImportReader::open(&bytes[..], InputFormat::Csv, &USERS).unwrap();
        let back = r.next_row().unwrap().unwrap().outcome.unwrap();
        assert_eq!(back, row);
        let mut w = ExportWriter::new(ExportFormat::JsonLines, &USERS);
        w.write_row(&row);
        let bytes = w.finish();
        let mut r = ImportReader::open(&bytes[..], InputFormat::JsonLines, &USERS).unwrap();
        let back = r.next_row().unwrap().unwrap().outcome.unwrap();
        assert_eq!(back[..13], row[..13]);
    }
}
