//! Streaming import readers: CSV and JSON lines, validated row by row
//! against an index's schema. Column problems are all found before any row
//! is read; a row's problem is reported with its row number.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use datask_core::index::{IndexDef, Value};

use crate::cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    JsonLines,
}

/// By the file name's extension, else by the first byte that is not
/// whitespace or a BOM (`{` means JSON lines).
pub fn detect_format(head: &[u8], filename: Option<&str>) -> InputFormat {
    if let Some(name) = filename.map(|n| n.to_ascii_lowercase()) {
        if name.ends_with(".csv") {
            return InputFormat::Csv;
        }
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
            return InputFormat::JsonLines;
        }
    }
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => InputFormat::JsonLines,
        _ => InputFormat::Csv,
    }
}

/// A problem with the file as a whole: nothing of it can be imported.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("the header is not valid UTF-8 (column {0})")]
    HeaderEncoding(usize),
    #[error("line {line} is not a JSON object: {problem}")]
    FirstLine { line: i64, problem: String },
    #[error("the file could not be read: {0}")]
    Io(#[from] std::io::Error),
    #[error("the file is not valid CSV near row {row}: {problem}")]
    Csv { row: i64, problem: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnProblem {
    pub column: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}", .0.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "))]
    Columns(Vec<ColumnProblem>),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Why a row was rejected. `code` is stable; `message` names the column
/// and value.
#[derive(Debug, Clone, PartialEq)]
pub struct RowProblem {
    pub code: &'static str,
    pub column: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRow {
    /// Header is row 1 in CSV; in JSON lines, the line number.
    pub row: i64,
    /// The record as one CSV line, or the JSON line as read.
    pub raw: String,
    /// Values in the order of `ImportReader::columns`.
    pub outcome: Result<Vec<Value>, RowProblem>,
}

enum Source<R: Read> {
    Csv {
        reader: csv::Reader<R>,
        record: csv::ByteRecord,
        width: usize,
        raw: Vec<u8>,
    },
    Json {
        lines: BufReader<R>,
        line: String,
        names: HashMap<String, usize>,
        first: Option<(i64, String)>,
    },
}

pub struct ImportReader<R: Read> {
    index: &'static IndexDef,
    columns: Vec<usize>,
    source: Source<R>,
    row: i64,
}

fn header_problems(index: &IndexDef, names: &[String]) -> (Vec<usize>, Vec<ColumnProblem>) {
    let mut columns = Vec::new();
    let mut problems = Vec::new();
    for (pos, name) in names.iter().enumerate() {
        if name.is_empty() {
            problems.push(ColumnProblem {
                column: String::new(),
                message: format!("Column {} of the header has no name", pos + 1),
            });
        } else if names[..pos].contains(name) {
            problems.push(ColumnProblem {
                column: name.clone(),
                message: format!("Column '{name}' appears more than once"),
            });
        } else {
            match index.column(name) {
                Some((i, _)) => columns.push(i),
                None => problems.push(ColumnProblem {
                    column: name.clone(),
                    message: format!(
                        "Column '{name}' is not a recognized field of index '{}'",
                        index.name
                    ),
                }),
            }
        }
    }
    let key = index.key().name;
    if !names.iter().any(|n| n == key) {
        problems.push(ColumnProblem {
            column: key.to_string(),
            message: format!(
                "Column '{key}' is required: it identifies the rows of index '{}'",
                index.name
            ),
        });
    }
    (columns, problems)
}

impl<R: Read> ImportReader<R> {
    pub fn open(
        reader: R,
        format: InputFormat,
        index: &'static IndexDef,
    ) -> Result<Self, OpenError> {
        match format {
            InputFormat::Csv => Self::open_csv(reader, index),
            InputFormat::JsonLines => Self::open_json(reader, index),
        }
    }

    fn open_csv(reader: R, index: &'static IndexDef) -> Result<Self, OpenError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(reader);
        let mut header = csv::ByteRecord::new();
        let got = reader
            .read_byte_record(&mut header)
            .map_err(|e| csv_error(e, 1))?;
        if !got {
            return Err(FileError::Empty.into());
        }
        let mut names = Vec::with_capacity(header.len());
        for (pos, field) in header.iter().enumerate() {
            let field = if pos == 0 {
                field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
            } else {
                field
            };
            let name =
                std::str::from_utf8(field).map_err(|_| FileError::HeaderEncoding(pos + 1))?;
            names.push(name.trim().to_string());
        }
        if names.len() == 1 && names[0].is_empty() {
            return Err(FileError::Empty.into());
        }
        let (columns, problems) = header_problems(index, &names);
        if !problems.is_empty() {
            return Err(OpenError::Columns(problems));
        }
        let raw = Vec::with_capacity(256);
        Ok(ImportReader {
            index,
            columns,
            source: Source::Csv {
                reader,
                record: csv::ByteRecord::new(),
                width: names.len(),
                raw,
            },
            row: 1,
        })
    }

    fn open_json(reader: R, index: &'static IndexDef) -> Result<Self, OpenError> {
        let mut lines = BufReader::with_capacity(1 << 16, reader);
        let mut line = String::new();
        let mut number = 0i64;
        let first = loop {
            line.clear();
            let n = read_line(&mut lines, &mut line).map_err(FileError::Io)?;
            if n == 0 {
                return Err(FileError::Empty.into());
            }
            number += 1;
            let text = line.trim_start_matches('\u{feff}').trim();
            if !text.is_empty() {
                break text.to_string();
            }
        };
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&first)
            .map_err(|e| FileError::FirstLine {
                line: number,
                problem: e.to_string(),
            })?;
        let names: Vec<String> = object.keys().cloned().collect();
        let (mut columns, problems) = header_problems(index, &names);
        if !problems.is_empty() {
            return Err(OpenError::Columns(problems));
        }
        // An object's keys have no meaningful order: use the index's.
        columns.sort_unstable();
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(pos, &c)| (index.columns[c].name.to_string(), pos))
            .collect();
        Ok(ImportReader {
            index,
            columns,
            source: Source::Json {
                lines,
                line,
                names: by_name,
                first: Some((number, first)),
            },
            row: number - 1,
        })
    }

    /// Positions in `index.columns` of the file's columns, in file order.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The file's column names, in file order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|&c| self.index.columns[c].name.to_string())
            .collect()
    }

    pub fn format(&self) -> InputFormat {
        match self.source {
            Source::Csv { .. } => InputFormat::Csv,
            Source::Json { .. } => InputFormat::JsonLines,
        }
    }

    /// Skips `n` data rows without validating them (resuming after a
    /// checkpoint); answers how many were there.
    pub fn skip_rows(&mut self, n: u64) -> Result<u64, FileError> {
        let mut skipped = 0;
        while skipped < n {
            let more = match &mut self.source {
                Source::Csv { reader, record, .. } => {
                    let more = reader
                        .read_byte_record(record)
                        .map_err(|e| csv_error(e, self.row + 1))?;
                    if more {
                        self.row += 1;
                    }
                    more
                }
                Source::Json {
                    lines, line, first, ..
                } => {
                    if let Some((number, _)) = first.take() {
                        self.row = number;
                        true
                    } else {
                        next_json_line(lines, line, &mut self.row)?
                    }
                }
            };
            if !more {
                break;
            }
            skipped += 1;
        }
        Ok(skipped)
    }

    /// The next data row; `None` at the end. `Err` only when the input
    /// cannot be read at all.
    pub fn next_row(&mut self) -> Option<Result<ParsedRow, FileError>> {
        match &mut self.source {
            Source::Csv {
                reader,
                record,
                width,
                raw,
            } => {
                match reader.read_byte_record(record) {
                    Ok(false) => return None,
                    Ok(true) => {}
                    Err(e) => return Some(Err(csv_error(e, self.row + 1))),
                }
                self.row += 1;
                // Blank lines are skipped by the csv crate; a lone empty field is a blank row.
                let raw_line = encode_raw(raw, record);
                let outcome = parse_csv_record(self.index, &self.columns, record, *width);
                Some(Ok(ParsedRow {
                    row: self.row,
                    raw: raw_line,
                    outcome,
                }))
            }
            Source::Json {
                lines,
                line,
                names,
                first,
            } => {
                let (number, text) = match first.take() {
                    Some(f) => f,
                    None => match next_json_line(lines, line, &mut self.row) {
                        Ok(true) => (self.row, line.trim().to_string()),
                        Ok(false) => return None,
                        Err(e) => return Some(Err(e)),
                    },
                };
                self.row = number;
                let outcome = parse_json_record(self.index, &self.columns, names, &text);
                Some(Ok(ParsedRow {
                    row: number,
                    raw: text,
                    outcome,
                }))
            }
        }
    }
}

fn csv_error(e: csv::Error, row: i64) -> FileError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => FileError::Io(io),
        other => FileError::Csv {
            row,
            problem: format!("{other:?}"),
        },
    }
}

/// Reads one line; invalid UTF-8 is kept lossily so the row can be reported.
fn read_line<B: BufRead>(r: &mut B, out: &mut String) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    let n = r.read_until(b'\n', &mut bytes)?;
    out.push_str(&String::from_utf8_lossy(&bytes));
    Ok(n)
}

/// Advances to the next non-empty line; answers false at the end.
fn next_json_line<R: Read>(
    lines: &mut BufReader<R>,
    line: &mut String,
    row: &mut i64,
) -> Result<bool, FileError> {
    loop {
        line.clear();
        if read_line(lines, line)? == 0 {
            return Ok(false);
        }
        *row += 1;
        if !line.trim().is_empty() {
            return Ok(true);
        }
    }
}

/// The record as one CSV line, quoted where needed (RFC 4180).
fn encode_raw(out: &mut Vec<u8>, record: &csv::ByteRecord) -> String {
    out.clear();
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if field
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
        {
            out.push(b'"');
            for &b in field {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field);
        }
    }
    String::from_utf8_lossy(out).into_owned()
}

fn parse_csv_record(
    index: &IndexDef,
    columns: &[usize],
    record: &csv::ByteRecord,
    width: usize,
) -> Result<Vec<Value>, RowProblem> {
    if record.len() != width {
        return Err(RowProblem {
            code: "ragged_row",
            column: None,
            message: format!("Row has {} fields, the header has {width}", record.len()),
        });
    }
    let mut values = Vec::with_capacity(columns.len());
    for (field, &c) in record.iter().zip(columns) {
        let col = &index.columns[c];
        let text = std::str::from_utf8(field).map_err(|_| RowProblem {
            code: "invalid_utf8",
            column: Some(col.name.to_string()),
            message: format!("Column '{}' is not valid UTF-8", col.name),
        })?;
        values.push(cell::parse_text(col, text)?);
    }
    Ok(values)
}

fn parse_json_record(
    index: &IndexDef,
    columns: &[usize],
    names: &HashMap<String, usize>,
    text: &str,
) -> Result<Vec<Value>, RowProblem> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| RowProblem {
            code: "invalid_json",
            column: None,
            message: format!("Line is not a JSON object: {e}"),
        })?;
    if let Some(extra) = object.keys().find(|k| !names.contains_key(*k)) {
        return Err(RowProblem {
            code: "unknown_field",
            column: Some(extra.clone()),
            message: format!("Field '{extra}' is not among the first line's fields"),
        });
    }
    columns
        .iter()
        .map(|&c| cell::parse_json(&index.columns[c], object.get(index.columns[c].name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datask_core::index::{PRODUCTS, USERS};

    fn rows(input: &[u8], index: &'static IndexDef) -> Vec<ParsedRow> {
        let mut r = ImportReader::open(input, detect_format(input, None), index).unwrap();
        std::iter::from_fn(|| r.next_row())
            .map(Result::unwrap)
            .collect()
    }

    fn columns_error(input: &[u8], index: &'static IndexDef) -> Vec<String> {
        match ImportReader::open(input, detect_format(input, None), index) {
            Err(OpenError::Columns(p)) => p.into_iter().map(|p| p.message).collect(),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn bom_crlf_and_quoted_newlines() {
        let input = b"\xEF\xBB\xBFproduct_id,name,price\r\np1,\"two\nlines\",1.5\r\np2,plain,2\r\n";
        let got = rows(input, &PRODUCTS);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].row, 2);
        assert_eq!(got[1].row, 3, "a quoted newline does not add a row");
        assert_eq!(
            got[0].outcome.as_ref().unwrap()[1],
            Value::Text("two\nlines".into())
        );
        assert_eq!(got[0].raw, "p1,\"two\nlines\",1.5");
        assert_eq!(got[1].outcome.as_ref().unwrap()[2], Value::Number(2.0));
    }

    #[test]
    fn row_problems_are_named() {
        let input = b"product_id,price,active\np1,1,true\n,2,true\np3,x,true\np4,1\np5,1,maybe\n";
        let got = rows(input, &PRODUCTS);
        let problems: Vec<(i64, &str, Option<&str>)> = got
            .iter()
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .err()
                    .map(|p| (r.row, p.code, p.column.as_deref()))
            })
            .collect();
        assert_eq!(
            problems,
            [
                (3, "missing_identifier", Some("product_id")),
                (4, "invalid_value", Some("price")),
                (5, "ragged_row", None),
                (6, "invalid_value", Some("active"))
            ]
        );
        assert_eq!(
            got[3].outcome.as_ref().unwrap_err().message,
            "Row has 2 fields, the header has 3"
        );
    }

    #[test]
    fn invalid_utf8_in_a_cell() {
        let input = b"product_id,name\np1,caf\xE9\n";
        let got = rows(input, &PRODUCTS);
        let p = got[0].outcome.as_ref().unwrap_err();
        assert_eq!(
            (p.code, p.column.as_deref()),
            ("invalid_utf8", Some("name"))
        );
    }

    #[test]
    fn empty_file_and_header_only() {
        assert!(matches!(
            ImportReader::open(&b""[..], InputFormat::Csv, &USERS),
            Err(OpenError::File(FileError::Empty))
        ));
        assert!(matches!(
            ImportReader::open(&b"\n"[..], InputFormat::Csv, &USERS),
            Err(OpenError::File(FileError::Empty))
        ));
        assert!(rows(b"user_id,email\n", &USERS).is_empty());
        assert!(matches!(
            ImportReader::open(&b"user_id,\xFF\n"[..], InputFormat::Csv, &USERS),
            Err(OpenError::File(FileError::HeaderEncoding(2)))
        ));
    }

    #[test]
    fn all_column_problems_together() {
        let got = columns_error(b"email,first.name,LTV,email,\nx,y,z,w,v\n", &USERS);
        assert_eq!(
            got,
            [
                "Column 'first.name' is not a recognized field of index 'users'",
                "Column 'LTV' is not a recognized field of index 'users'",
                "Column 'email' appears more than once",
                "Column 5 of the header has no name",
                "Column 'user_id' is required: it identifies the rows of index 'users'",
            ]
        );
    }

    #[test]
    fn json_lines() {
        let input = b"{\"product_id\":\"p1\",\"price\":1.5,\"active\":true}\n\n[1]\n{\"product_id\":\"p2\",\"colour\":\"red\"}\n{\"product_id\":\"p3\",\"price\":\"2\"}\n{\"price\":3}\n";
        let got = rows(input, &PRODUCTS);
        let summary: Vec<(i64, Result<Vec<Value>, &str>)> = got
            .iter()
            .map(|r| (r.row, r.outcome.clone().map_err(|p| p.code)))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    Ok(vec![
                        Value::Text("p1".into()),
                        Value::Number(1.5),
                        Value::Boolean(true)
                    ])
                ),
                (3, Err("invalid_json")),
                (4, Err("unknown_field")),
                (
                    5,
                    Ok(vec![
                        Value::Text("p3".into()),
                        Value::Number(2.0),
                        Value::Null
                    ])
                ),
                (6, Err("missing_identifier")),
            ]
        );
        assert_eq!(columns_error(b"{\"id\":1}\n", &PRODUCTS).len(), 2);
    }

    #[test]
    fn skip_rows_resumes_numbering() {
        let input = b"product_id\np1\np2\np3\n";
        let mut r = ImportReader::open(&input[..], InputFormat::Csv, &PRODUCTS).unwrap();
        assert_eq!(r.skip_rows(2).unwrap(), 2);
        let next = r.next_row().unwrap().unwrap();
        assert_eq!((next.row, next.raw.as_str()), (4, "p3"));
        assert!(r.next_row().is_none());
        let mut r = ImportReader::open(&input[..], InputFormat::Csv, &PRODUCTS).unwrap();
        assert_eq!(r.skip_rows(10).unwrap(), 3);
        let input = b"{\"product_id\":\"a\"}\n{\"product_id\":\"b\"}\n";
        let mut r = ImportReader::open(&input[..], InputFormat::JsonLines, &PRODUCTS).unwrap();
        assert_eq!(r.skip_rows(1).unwrap(), 1);
        assert_eq!(r.next_row().unwrap().unwrap().row, 2);
    }

    #[test]
    fn format_detection() {
        assert_eq!(detect_format(b"{}", Some("x.CSV")), InputFormat::Csv);
        assert_eq!(
            detect_format(b"a,b", Some("x.ndjson")),
            InputFormat::JsonLines
        );
        assert_eq!(
            detect_format(b"\xEF\xBB\xBF  {", None),
            InputFormat::JsonLines
        );
        assert_eq!(detect_format(b"user_id", None), InputFormat::Csv);
    }

    /// A reader that makes rows as they are read: the whole file never exists.
    struct Lazy {
        next: u64,
        rows: u64,
        pending: Vec<u8>,
    }

    impl Read for Lazy {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            while self.pending.len() < buf.len() && self.next <= self.rows {
                if self.next == 0 {
                    self.pending.extend_from_slice(b"product_id,price\n");
                } else {
                    self.pending.extend_from_slice(
                        format!("p{},{}.5\n", self.next, self.next % 100).as_bytes(),
                    );
                }
                self.next += 1;
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn streams_without_holding_the_file() {
        let mut r = ImportReader::open(
            Lazy {
                next: 0,
                rows: 200_000,
                pending: Vec::new(),
            },
            InputFormat::Csv,
            &PRODUCTS,
        )
        .unwrap();
        let mut n = 0;
        let mut last = 0;
        while let Some(row) = r.next_row() {
            let row = row.unwrap();
            assert!(row.outcome.is_ok());
            last = row.row;
            n += 1;
        }
        assert_eq!((n, last), (200_000, 200_001));
    }
}
