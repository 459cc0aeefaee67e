//! Streaming import readers: CSV and JSON lines, validated row by row
//! against an index's schema. Column problems are all found before any row
//! is read; a row's first problem is reported with its row number.
//!
//! Memory is bounded by the longest record (capped by
//! [`MAX_RECORD_BYTES`]), never by the file: one record buffer is reused,
//! and a row costs only the values it yields.

use std::io::{BufRead, BufReader, Read};

use datask_core::index::{IndexDef, Value};
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::cell;

/// The longest record (CSV record or JSON line) read before the file is
/// given up on: an unclosed quote must not pull a whole file into memory.
pub const MAX_RECORD_BYTES: u64 = 32 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";
const READ_BUFFER: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    JsonLines,
}

/// By the file name's extension (`.csv`; `.jsonl`, `.ndjson`, `.json`),
/// else by the first byte that is not whitespace or a BOM (`{` means JSON
/// lines).
pub fn detect_format(head: &[u8], filename: Option<&str>) -> InputFormat {
    if let Some(name) = filename.map(|n| n.to_ascii_lowercase()) {
        if name.ends_with(".csv") {
            return InputFormat::Csv;
        }
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
            return InputFormat::JsonLines;
        }
    }
    let head = head.strip_prefix(BOM).unwrap_or(head);
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => InputFormat::JsonLines,
        _ => InputFormat::Csv,
    }
}

/// A problem with the file as a whole: nothing (more) of it can be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error(
        "the header is not valid UTF-8: column {column} has an invalid byte at byte {byte} of its name"
    )]
    HeaderEncoding { column: usize, byte: usize },
    #[error("line {line} is not valid UTF-8 (byte {byte} of the line)")]
    LineEncoding { line: i64, byte: usize },
    #[error("line {line} is not a JSON object, so it cannot name the columns: {problem}")]
    FirstLine { line: i64, problem: String },
    #[error("row {row} is longer than {limit} bytes (is a quote left open?)")]
    RecordTooLong { row: i64, limit: u64 },
    #[error("the file could not be read near row {row}: {source}")]
    Io { row: i64, source: std::io::Error },
    #[error("the file is not valid CSV near row {row}: {problem}")]
    Csv { row: i64, problem: String },
}

/// One problem with the file's columns (header, or first JSON line).
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnProblem {
    /// The column as written; empty for a column without a name.
    pub column: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Every column problem of the header, in header order, then the
    /// missing required columns.
    #[error("{}", .0.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "))]
    Columns(Vec<ColumnProblem>),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Why a row was rejected. `code` is stable (see `report::row_message`);
/// `message` names the column and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct RowProblem {
    pub code: &'static str,
    pub column: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRow {
    /// CSV: the header is row 1, the first data row 2 (records, not lines).
    /// JSON lines: the line number.
    pub row: i64,
    /// The record re-encoded as one CSV line (no newline), or the JSON line.
    pub raw: String,
    /// Values in the order of [`ImportReader::columns`].
    pub outcome: Result<Vec<Value>, RowProblem>,
}

/// The input as the parsers see it: a leading BOM dropped, and the bytes
/// read since the last record counted so a runaway record stops.
struct Input<R> {
    inner: R,
    head: [u8; 3],
    head_at: usize,
    head_len: usize,
    started: bool,
    since_mark: u64,
    limit: u64,
    tripped: bool,
}

impl<R: Read> Input<R> {
    fn new(inner: R) -> Self {
        Input {
            inner,
            head: [0; 3],
            head_at: 0,
            head_len: 0,
            started: false,
            since_mark: 0,
            limit: MAX_RECORD_BYTES,
            tripped: false,
        }
    }

    /// A record ended: the next one starts counting.
    fn mark(&mut self) {
        self.since_mark = 0;
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.started {
            while self.head_len < 3 {
                match self.inner.read(&mut self.head[self.head_len..]) {
                    Ok(0) => break,
                    Ok(n) => self.head_len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.started = true;
            if self.head[..self.head_len] == *BOM {
                self.head_len = 0;
            }
        }
        if self.head_at < self.head_len {
            let n = buf.len().min(self.head_len - self.head_at);
            buf[..n].copy_from_slice(&self.head[self.head_at..self.head_at + n]);
            self.head_at += n;
            return Ok(n);
        }
        if self.since_mark > self.limit {
            self.tripped = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "record too long",
            ));
        }
        let n = self.inner.read(buf)?;
        self.since_mark += n as u64;
        Ok(n)
    }
}

fn io_error<R>(input: &Input<R>, e: std::io::Error, row: i64) -> FileError {
    if input.tripped {
        FileError::RecordTooLong {
            row,
            limit: input.limit,
        }
    } else {
        FileError::Io { row, source: e }
    }
}

enum Source<R: Read> {
    Csv {
        reader: csv::Reader<Input<R>>,
        record: csv::ByteRecord,
        width: usize,
    },
    Json {
        lines: BufReader<Input<R>>,
        line: Vec<u8>,
        /// The line in `line` is the first one, read at open, not yet given.
        pending: bool,
        /// Column names in the order of `columns`.
        names: Vec<&'static str>,
        /// Byte ranges of each column's JSON value in the current line.
        slots: Vec<Option<(usize, usize)>>,
    },
}

/// Reads an import file row by row. See the module documentation.
pub struct ImportReader<R: Read> {
    index: &'static IndexDef,
    columns: Vec<usize>,
    source: Source<R>,
    /// The row number of the last record read.
    row: i64,
}

fn header_problems(index: &IndexDef, names: &[String]) -> (Vec<usize>, Vec<ColumnProblem>) {
    let mut columns = Vec::with_capacity(names.len());
    let mut problems = Vec::new();
    for (pos, name) in names.iter().enumerate() {
        if name.is_empty() {
            problems.push(ColumnProblem {
                column: String::new(),
                message: format!("Column {} of the header has no name", pos + 1),
            });
        } else if names[..pos].contains(name) {
            // Reported once, at its second appearance.
            if names[..pos].iter().filter(|n| *n == name).count() == 1 {
                problems.push(ColumnProblem {
                    column: name.clone(),
                    message: format!("Column '{name}' appears more than once"),
                });
            }
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
    for (i, col) in index.columns.iter().enumerate() {
        if (i == 0 || col.required) && !names.iter().any(|n| n == col.name) {
            problems.push(ColumnProblem {
                column: col.name.to_string(),
                message: if i == 0 {
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
    (columns, problems)
}

impl<R: Read> ImportReader<R> {
    /// Reads and checks the header (CSV) or the first object (JSON lines).
    /// Column problems are all reported together, before any row is read.
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
            .buffer_capacity(READ_BUFFER)
            .from_reader(Input::new(reader));
        let mut header = csv::ByteRecord::new();
        let got = reader
            .read_byte_record(&mut header)
            .map_err(|e| csv_error(reader.get_ref(), e, 1))?;
        if !got {
            return Err(FileError::Empty.into());
        }
        reader.get_mut().mark();
        let mut names = Vec::with_capacity(header.len());
        for (pos, field) in header.iter().enumerate() {
            let name = std::str::from_utf8(field).map_err(|e| FileError::HeaderEncoding {
                column: pos + 1,
                byte: e.valid_up_to() + 1,
            })?;
            names.push(name.trim().to_string());
        }
        if names.len() == 1 && names[0].is_empty() {
            return Err(FileError::Empty.into());
        }
        let (columns, problems) = header_problems(index, &names);
        if !problems.is_empty() {
            return Err(OpenError::Columns(problems));
        }
        Ok(ImportReader {
            index,
            columns,
            source: Source::Csv {
                reader,
                record: csv::ByteRecord::with_capacity(1024, names.len()),
                width: names.len(),
            },
            row: 1,
        })
    }

    fn open_json(reader: R, index: &'static IndexDef) -> Result<Self, OpenError> {
        let mut lines = BufReader::with_capacity(READ_BUFFER, Input::new(reader));
        let mut line = Vec::with_capacity(1024);
        let mut number = 0;
        if !next_line(&mut lines, &mut line, &mut number)? {
            return Err(FileError::Empty.into());
        }
        let text = std::str::from_utf8(line.trim_ascii()).map_err(|e| FileError::LineEncoding {
            line: number,
            byte: e.valid_up_to() + 1,
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        let keys = de
            .deserialize_map(KeysVisitor)
            .and_then(|keys| de.end().map(|()| keys))
            .map_err(|e| FileError::FirstLine {
                line: number,
                problem: e.to_string(),
            })?;
        let (columns, problems) = header_problems(index, &keys);
        if !problems.is_empty() {
            return Err(OpenError::Columns(problems));
        }
        let names = columns.iter().map(|&c| index.columns[c].name).collect();
        let slots = vec![None; columns.len()];
        Ok(ImportReader {
            index,
            columns,
            source: Source::Json {
                lines,
                line,
                pending: true,
                names,
                slots,
            },
            row: number,
        })
    }

    /// Changes the longest record accepted (default [`MAX_RECORD_BYTES`]);
    /// the read-ahead buffer (64 KiB) comes on top of it.
    pub fn set_record_limit(&mut self, bytes: u64) {
        match &mut self.source {
            Source::Csv { reader, .. } => reader.get_mut().limit = bytes,
            Source::Json { lines, .. } => lines.get_mut().limit = bytes,
        }
    }

    /// Positions in `index.columns` of the file's columns, in file order
    /// (for JSON lines, the first object's key order). Always includes 0,
    /// the key.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The file's column names, in the order of [`Self::columns`].
    pub fn column_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|&c| self.index.columns[c].name.to_string())
            .collect()
    }

    pub fn index(&self) -> &'static IndexDef {
        self.index
    }

    pub fn format(&self) -> InputFormat {
        match self.source {
            Source::Csv { .. } => InputFormat::Csv,
            Source::Json { .. } => InputFormat::JsonLines,
        }
    }

    /// Skips `n` data rows without validating them (resuming after a
    /// checkpoint); they still count for row numbers. Answers how many
    /// there were (fewer than `n` at the end of the file).
    pub fn skip_rows(&mut self, n: u64) -> Result<u64, FileError> {
        let mut skipped = 0;
        while skipped < n {
            let more = match &mut self.source {
                Source::Csv { reader, record, .. } => {
                    let more = reader
                        .read_byte_record(record)
                        .map_err(|e| csv_error(reader.get_ref(), e, self.row + 1))?;
                    reader.get_mut().mark();
                    if more {
                        self.row += 1;
                    }
                    more
                }
                Source::Json {
                    lines,
                    line,
                    pending,
                    ..
                } => std::mem::take(pending) || next_line(lines, line, &mut self.row)?,
            };
            if !more {
                break;
            }
            skipped += 1;
        }
        Ok(skipped)
    }

    /// The next data row; `None` at the end. `Err` only when the input
    /// cannot be read any further; a bad row is `Ok` with a problem.
    pub fn next_row(&mut self) -> Option<Result<ParsedRow, FileError>> {
        match &mut self.source {
            Source::Csv {
                reader,
                record,
                width,
            } => {
                match reader.read_byte_record(record) {
                    Ok(false) => return None,
                    Ok(true) => {}
                    Err(e) => return Some(Err(csv_error(reader.get_ref(), e, self.row + 1))),
                }
                reader.get_mut().mark();
                self.row += 1;
                let (raw, outcome) = parse_csv_record(self.index, &self.columns, record, *width);
                Some(Ok(ParsedRow {
                    row: self.row,
                    raw,
                    outcome,
                }))
            }
            Source::Json {
                lines,
                line,
                pending,
                names,
                slots,
            } => {
                if !std::mem::take(pending) {
                    match next_line(lines, line, &mut self.row) {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(e) => return Some(Err(e)),
                    }
                }
                let bytes = line.trim_ascii();
                let (raw, outcome) = match std::str::from_utf8(bytes) {
                    Ok(text) => (
                        text.to_string(),
                        parse_json_line(self.index, &self.columns, names, slots, text),
                    ),
                    Err(e) => (
                        String::from_utf8_lossy(bytes).into_owned(),
                        Err(RowProblem {
                            code: "invalid_utf8",
                            column: None,
                            message: format!(
                                "Line is not valid UTF-8 (byte {} of the line)",
                                e.valid_up_to() + 1
                            ),
                        }),
                    ),
                };
                Some(Ok(ParsedRow {
                    row: self.row,
                    raw,
                    outcome,
                }))
            }
        }
    }
}

impl<R: Read> Iterator for ImportReader<R> {
    type Item = Result<ParsedRow, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row()
    }
}

fn csv_error<R>(input: &Input<R>, e: csv::Error, row: i64) -> FileError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_error(input, io, row),
        other => FileError::Csv {
            row,
            problem: format!("{other:?}"),
        },
    }
}

/// Reads the next line that is not blank into `line`, counting lines in
/// `number`; false at the end of the input.
fn next_line<R: Read>(
    lines: &mut BufReader<Input<R>>,
    line: &mut Vec<u8>,
    number: &mut i64,
) -> Result<bool, FileError> {
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', line)
            .map_err(|e| io_error(lines.get_ref(), e, *number + 1))?;
        lines.get_mut().mark();
        if n == 0 {
            return Ok(false);
        }
        *number += 1;
        if !line.trim_ascii().is_empty() {
            return Ok(true);
        }
    }
}

/// Whether a field holds a byte that CSV must quote (`,` `"` CR LF),
/// eight bytes at a time.
pub(crate) fn needs_quotes(field: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let has = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let mut words = field.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_ne_bytes(w.try_into().expect("eight bytes"));
        if has(w, b',') | has(w, b'"') | has(w, b'\n') | has(w, b'\r') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
}

/// Appends one field to a CSV line, quoted where needed (RFC 4180).
pub(crate) fn push_csv_field(out: &mut String, field: &str) {
    if needs_quotes(field.as_bytes()) {
        out.push('"');
        for (i, part) in field.split('"').enumerate() {
            if i > 0 {
                out.push_str("\"\"");
            }
            out.push_str(part);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Validates one CSV record and re-encodes it as one line, in one pass.
fn parse_csv_record(
    index: &IndexDef,
    columns: &[usize],
    record: &csv::ByteRecord,
    width: usize,
) -> (String, Result<Vec<Value>, RowProblem>) {
    let mut raw = String::with_capacity(record.as_slice().len() + record.len() + 8);
    let mut outcome = if record.len() == width {
        Ok(Vec::with_capacity(width))
    } else {
        Err(RowProblem {
            code: "ragged_row",
            column: None,
            message: format!("Row has {} fields, the header has {width}", record.len()),
        })
    };
    // One UTF-8 check for the whole record; a field is then valid when
    // it starts and ends on character boundaries.
    let whole = std::str::from_utf8(record.as_slice()).ok();
    let quoting = needs_quotes(record.as_slice());
    for (pos, field) in record.iter().enumerate() {
        if pos > 0 {
            raw.push(',');
        }
        let text = match whole.and_then(|w| w.get(record.range(pos)?)) {
            Some(text) => Ok(text),
            None => std::str::from_utf8(field),
        };
        let text = match text {
            Ok(text) => text,
            Err(_) => {
                push_csv_field(&mut raw, &String::from_utf8_lossy(field));
                if outcome.is_ok() {
                    let name = index.columns[columns[pos]].name;
                    outcome = Err(RowProblem {
                        code: "invalid_utf8",
                        column: Some(name.to_string()),
                        message: format!("Column '{name}' is not valid UTF-8"),
                    });
                }
                continue;
            }
        };
        if quoting {
            push_csv_field(&mut raw, text);
        } else {
            raw.push_str(text);
        }
        if let Ok(values) = &mut outcome {
            let c = columns[pos];
            match cell::parse_text(&index.columns[c], c == 0, text) {
                Ok(v) => values.push(v),
                Err(p) => outcome = Err(p),
            }
        }
    }
    // A lone empty field must stay a (quoted) record, not a blank line.
    if raw.is_empty() && record.len() == 1 {
        raw.push_str("\"\"");
    }
    (raw, outcome)
}

/// The first line's keys, in order.
struct KeysVisitor;

impl<'de> Visitor<'de> for KeysVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<IgnoredAny>()?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// A later line's key: one of the columns, or the first unknown one.
enum Key {
    Known(usize),
    Unknown(String),
}

struct KeySeed<'a>(&'a [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match self.0.iter().position(|n| *n == key) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(key.to_string()),
        })
    }
}

/// Records where each column's value lies in the line, without building
/// anything; the first unknown key is kept.
struct LineVisitor<'a> {
    base: usize,
    names: &'a [&'static str],
    slots: &'a mut [Option<(usize, usize)>],
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut unknown = None;
        while let Some(key) = map.next_key_seed(KeySeed(self.names))? {
            match key {
                Key::Known(i) => {
                    let v: &'de RawValue = map.next_value()?;
                    let start = v.get().as_ptr() as usize - self.base;
                    self.slots[i] = Some((start, start + v.get().len()));
                }
                Key::Unknown(k) => {
                    map.next_value::<IgnoredAny>()?;
                    unknown.get_or_insert(k);
                }
            }
        }
        Ok(unknown)
    }
}

fn parse_json_line(
    index: &IndexDef,
    columns: &[usize],
    names: &[&'static str],
    slots: &mut [Option<(usize, usize)>],
    text: &str,
) -> Result<Vec<Value>, RowProblem> {
    slots.fill(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let visitor = LineVisitor {
        base: text.as_ptr() as usize,
        names,
        slots,
    };
    let unknown = de
        .deserialize_map(visitor)
        .and_then(|u| de.end().map(|()| u))
        .map_err(|e| RowProblem {
            code: "invalid_json",
            column: None,
            message: format!("Line is not a JSON object: {e}"),
        })?;
    if let Some(extra) = unknown {
        return Err(RowProblem {
            code: "unknown_field",
            column: Some(extra.clone()),
            message: format!("Field '{extra}' is not among the first line's fields"),
        });
    }
    let mut values = Vec::with_capacity(columns.len());
    for (&c, slot) in columns.iter().zip(slots.iter()) {
        let raw = slot.map(|(start, end)| &text[start..end]);
        values.push(cell::parse_json(&index.columns[c], c == 0, raw)?);
    }
    Ok(values)
}

#[cfg(test)]
mod tests;
