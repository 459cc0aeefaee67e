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
use crate::schema::{Schema, Slot};

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
    #[error(
        "row {row}: the quoted value in column '{column}' is never closed, so it would take in the rest of the file; close it with a \" or double a quote inside it (\"\")"
    )]
    QuoteLeftOpen { row: i64, column: String },
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
    /// CSV only: where the quoting stands, for the end of the file.
    quotes: Option<QuoteScan>,
    /// The underlying reader has answered end of file.
    ended: bool,
}

/// Follows CSV quoting over the bytes as csv-core reads them (`,` between
/// fields, `"` opening a field, `""` inside one, CR / LF / CRLF ending a
/// record) for the one thing csv-core does not tell: whether the file ended
/// inside a quoted field. csv-core then closes the field silently, and a
/// stray quote would take the rest of the file into one value. Only quotes
/// are looked at (`memchr`), so a file without them costs one search per
/// read.
#[derive(Default)]
struct QuoteScan {
    state: Quoting,
    /// The last byte seen, for a quote at the start of the next read.
    last: Option<u8>,
}

#[derive(Default, PartialEq)]
enum Quoting {
    /// Not inside a quoted field.
    #[default]
    Outside,
    Quoted,
    /// Inside a quoted field, right after a quote: closed, unless another
    /// quote follows (an escaped one).
    QuoteInQuoted,
}

impl QuoteScan {
    fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                Quoting::Outside => {
                    let Some(j) = memchr::memchr(b'"', &bytes[i..]) else {
                        break;
                    };
                    let at = i + j;
                    let before = if at == 0 {
                        self.last
                    } else {
                        Some(bytes[at - 1])
                    };
                    // A quote opens a field only at its start; elsewhere
                    // csv-core keeps it as a plain character.
                    if matches!(before, None | Some(b',' | b'\n' | b'\r')) {
                        self.state = Quoting::Quoted;
                    }
                    i = at + 1;
                }
                Quoting::Quoted => {
                    let Some(j) = memchr::memchr(b'"', &bytes[i..]) else {
                        break;
                    };
                    i += j + 1;
                    self.state = Quoting::QuoteInQuoted;
                }
                Quoting::QuoteInQuoted => {
                    self.state = if bytes[i] == b'"' {
                        Quoting::Quoted
                    } else {
                        Quoting::Outside
                    };
                    i += 1;
                }
            }
        }
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
    }
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
            quotes: None,
            ended: false,
        }
    }

    fn csv(inner: R) -> Self {
        Input {
            quotes: Some(QuoteScan::default()),
            ..Input::new(inner)
        }
    }

    /// The file has ended inside a quoted field.
    fn quote_left_open(&self) -> bool {
        self.ended
            && self
                .quotes
                .as_ref()
                .is_some_and(|q| q.state == Quoting::Quoted)
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
            if let Some(q) = &mut self.quotes {
                q.feed(&buf[..n]);
            }
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
        if n == 0 && !buf.is_empty() {
            self.ended = true;
        }
        if let Some(q) = &mut self.quotes {
            q.feed(&buf[..n]);
        }
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
        /// Byte ranges of each file column's JSON value in the current line.
        ranges: Vec<Option<(usize, usize)>>,
    },
}

/// Reads an import file row by row. See the module documentation.
pub struct ImportReader<R: Read> {
    schema: Schema,
    /// The file's column names, as written.
    names: Vec<String>,
    /// Where each file column goes.
    slots: Vec<Slot>,
    /// Positions in `index.columns` of the values a row yields.
    columns: Vec<usize>,
    /// Column problems that did not stop the import (profiles).
    problems: Vec<ColumnProblem>,
    /// Profiles: where a row's values go once parsed (worked out once).
    profile: Option<ProfilePlan>,
    source: Source<R>,
    /// The row number of the last record read.
    row: i64,
}

impl<R: Read> ImportReader<R> {
    /// Reads and checks the header (CSV) or the first object (JSON lines)
    /// against an index. Column problems are all reported together, before
    /// any row is read.
    pub fn open(
        reader: R,
        format: InputFormat,
        index: &'static IndexDef,
    ) -> Result<Self, OpenError> {
        Self::open_with(reader, format, Schema::index(index))
    }

    /// As [`Self::open`], against any schema (e.g. [`Schema::profiles`]).
    pub fn open_with(reader: R, format: InputFormat, schema: Schema) -> Result<Self, OpenError> {
        match format {
            InputFormat::Csv => Self::open_csv(reader, schema),
            InputFormat::JsonLines => Self::open_json(reader, schema),
        }
    }

    /// Maps the header; `Err` when a problem stops the import.
    fn plan(
        schema: Schema,
        names: Vec<String>,
        source: Source<R>,
        row: i64,
    ) -> Result<Self, OpenError> {
        let (slots, problems, fatal) = schema.map_header(&names);
        if fatal {
            return Err(OpenError::Columns(problems));
        }
        let mut columns: Vec<usize> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Column(c) => Some(*c),
                _ => None,
            })
            .collect();
        let n_columns = columns.len();
        let identifier_at = columns.iter().position(|&c| c == schema.identifier);
        let user_id_at = columns.iter().position(|&c| c == 0);
        if schema.profiles && user_id_at.is_none() {
            columns.push(0);
        }
        let profile = schema.profiles.then(|| ProfilePlan {
            n_columns,
            identifier_at,
            user_id_at,
            attributes: slots
                .iter()
                .filter_map(|s| match s {
                    Slot::Attribute(a) => Some(schema.attributes[*a].0.clone()),
                    _ => None,
                })
                .collect(),
        });
        if slots.iter().any(|s| matches!(s, Slot::Attribute(_))) {
            let (at, _) = schema
                .index
                .column("attributes")
                .expect("profiles have attributes");
            columns.push(at);
        }
        Ok(ImportReader {
            schema,
            names,
            slots,
            columns,
            problems,
            profile,
            source,
            row,
        })
    }

    fn open_csv(reader: R, schema: Schema) -> Result<Self, OpenError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(READ_BUFFER)
            .from_reader(Input::csv(reader));
        let mut header = csv::ByteRecord::new();
        let got = reader
            .read_byte_record(&mut header)
            .map_err(|e| csv_error(reader.get_ref(), e, 1))?;
        if !got {
            return Err(FileError::Empty.into());
        }
        if reader.get_ref().quote_left_open() {
            // The field holds the rest of the file: name it by its start.
            let field = header.iter().last().unwrap_or_default();
            let first_line = field
                .split(|b| *b == b'\n' || *b == b'\r')
                .next()
                .unwrap_or_default();
            let column: String = String::from_utf8_lossy(first_line)
                .trim()
                .chars()
                .take(64)
                .collect();
            return Err(FileError::QuoteLeftOpen { row: 1, column }.into());
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
        let width = names.len();
        Self::plan(
            schema,
            names,
            Source::Csv {
                reader,
                record: csv::ByteRecord::with_capacity(1024, width),
                width,
            },
            1,
        )
    }

    fn open_json(reader: R, schema: Schema) -> Result<Self, OpenError> {
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
        let ranges = vec![None; keys.len()];
        Self::plan(
            schema,
            keys,
            Source::Json {
                lines,
                line,
                pending: true,
                ranges,
            },
            number,
        )
    }

    /// Column problems that did not stop the import: those columns are
    /// skipped (profile imports; always empty otherwise).
    pub fn column_problems(&self) -> &[ColumnProblem] {
        &self.problems
    }

    /// Changes the longest record accepted (default [`MAX_RECORD_BYTES`]);
    /// the read-ahead buffer (64 KiB) comes on top of it.
    pub fn set_record_limit(&mut self, bytes: u64) {
        match &mut self.source {
            Source::Csv { reader, .. } => reader.get_mut().limit = bytes,
            Source::Json { lines, .. } => lines.get_mut().limit = bytes,
        }
    }

    /// Positions in `index.columns` of the values each row yields: the
    /// file's index columns in file order (for JSON lines, the first
    /// object's key order); for profiles then `user_id` when derived and
    /// `attributes` when the file has attribute columns. Always includes
    /// the key.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The file's column names as written (the header of a failed-rows file).
    pub fn column_names(&self) -> Vec<String> {
        self.names.clone()
    }

    pub fn index(&self) -> &'static IndexDef {
        self.schema.index
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
                if reader.get_ref().quote_left_open() {
                    // The open field is the record's last: it ran to the end.
                    let at = record.len().max(1) - 1;
                    let column = self
                        .names
                        .get(at)
                        .cloned()
                        .unwrap_or_else(|| format!("{}", at + 1));
                    return Some(Err(FileError::QuoteLeftOpen {
                        row: self.row,
                        column,
                    }));
                }
                let (raw, mut outcome) =
                    parse_csv_record(&self.schema, &self.names, &self.slots, record, *width);
                if let (Ok(values), Some(plan)) = (&mut outcome, &self.profile) {
                    plan.finish(values);
                }
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
                ranges,
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
                    Ok(text) => {
                        let mut outcome =
                            parse_json_line(&self.schema, &self.names, &self.slots, ranges, text);
                        if let (Ok(values), Some(plan)) = (&mut outcome, &self.profile) {
                            plan.finish(values);
                        }
                        (text.to_string(), outcome)
                    }
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
/// Values come in slot order: index columns first, then attributes.
fn parse_csv_record(
    schema: &Schema,
    names: &[String],
    slots: &[Slot],
    record: &csv::ByteRecord,
    width: usize,
) -> (String, Result<Vec<Value>, RowProblem>) {
    let index = schema.index;
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
    let mut attributes = Vec::new();
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
                    let name = names.get(pos).map(String::as_str).unwrap_or("?");
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
            match slots.get(pos) {
                Some(Slot::Column(c)) => {
                    match cell::parse_text(&index.columns[*c], schema.is_identifier(*c), text)
                        .and_then(|v| checked_cell(schema, *c, v))
                    {
                        Ok(v) => values.push(v),
                        Err(p) => outcome = Err(p),
                    }
                }
                Some(Slot::Attribute(a)) => {
                    let (name, ty) = &schema.attributes[*a];
                    let spec = cell::Spec {
                        name,
                        ty: *ty,
                        required: false,
                    };
                    match cell::text_cell(&spec, false, text) {
                        Ok(v) => attributes.push(v),
                        Err(p) => outcome = Err(p),
                    }
                }
                _ => {}
            }
        }
    }
    if let Ok(values) = &mut outcome {
        values.append(&mut attributes);
    }
    // A lone empty field must stay a (quoted) record, not a blank line.
    if raw.is_empty() && record.len() == 1 {
        raw.push_str("\"\"");
    }
    (raw, outcome)
}

/// How a parsed profile row is finished, worked out from the header.
struct ProfilePlan {
    /// Values of index columns, in file order; attribute values follow.
    n_columns: usize,
    /// Positions among those values.
    identifier_at: Option<usize>,
    user_id_at: Option<usize>,
    /// Names of the attribute columns, in file order.
    attributes: Vec<String>,
}

impl ProfilePlan {
    /// The attribute values (at the end) become one JSON object, and a
    /// missing `user_id` comes from the identifier.
    fn finish(&self, values: &mut Vec<Value>) {
        let attributes = (!self.attributes.is_empty())
            .then(|| attributes_json(&self.attributes, values.drain(self.n_columns..)));
        values.truncate(self.n_columns);
        let identifier = |values: &[Value]| {
            self.identifier_at
                .map(|p| values[p].clone())
                .unwrap_or(Value::Null)
        };
        match self.user_id_at {
            None => values.push(identifier(values)),
            Some(p) if values[p] == Value::Null => values[p] = identifier(values),
            Some(_) => {}
        }
        if let Some(attributes) = attributes {
            values.push(attributes);
        }
    }
}

/// Attribute values as one JSON object in the order given (names are
/// distinct: a repeated column is refused with the header); empty ones are
/// left out. Written straight to text: a map per row was a tenth of the
/// parser's allocations.
pub(crate) fn attributes_json(names: &[String], attrs: impl Iterator<Item = Value>) -> Value {
    fn put(out: &mut Vec<u8>, v: &impl serde::Serialize) {
        serde_json::to_writer(out, v).expect("JSON of a plain value into memory");
    }
    let mut out = Vec::with_capacity(16 * names.len() + 2);
    out.push(b'{');
    for (name, value) in names.iter().zip(attrs) {
        let start = out.len();
        if start > 1 {
            out.push(b',');
        }
        put(&mut out, name);
        out.push(b':');
        let written = match value {
            Value::Null => false,
            Value::Text(s) => {
                put(&mut out, &s);
                true
            }
            // JSON has no NaN or infinity.
            Value::Number(f) => {
                f.is_finite() && {
                    put(&mut out, &f);
                    true
                }
            }
            Value::Integer(i) => {
                put(&mut out, &i);
                true
            }
            Value::Boolean(b) => {
                put(&mut out, &b);
                true
            }
            Value::Time(us) => {
                put(&mut out, &datask_core::settings::attribute_time(us));
                true
            }
            Value::Json(j) => match serde_json::from_str::<serde_json::Value>(&j) {
                Ok(v) => {
                    put(&mut out, &v);
                    true
                }
                Err(_) => false,
            },
        };
        if !written {
            out.truncate(start);
        }
    }
    if out.len() == 1 {
        return Value::Null;
    }
    out.push(b'}');
    Value::Json(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// The first line's keys, in order.
struct KeysVisitor;

impl<'de> Visitor<'de> for KeysVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
        // Every key, repeats too: the header check refuses a repeated one
        // as it does a CSV header's ("appears more than once").
        let mut keys: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<IgnoredAny>()?;
            keys.push(key);
        }
        Ok(keys)
    }
}

/// A later line's key: one of the first line's, or the first unknown one.
enum Key {
    Known(usize),
    Unknown(String),
}

struct KeySeed<'a>(&'a [String]);

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
        Ok(match self.0.iter().position(|n| n == key) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(key.to_string()),
        })
    }
}

/// Records where each column's value lies in the line, without building
/// anything; the first unknown or repeated key is kept.
/// The first key of a line that stops it: one the first line does not
/// have, or one the line already had.
enum OddKey {
    Unknown(String),
    Repeated(String),
}

struct LineVisitor<'a> {
    base: usize,
    names: &'a [String],
    ranges: &'a mut [Option<(usize, usize)>],
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Option<OddKey>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<OddKey>, A::Error> {
        let mut odd = None;
        while let Some(key) = map.next_key_seed(KeySeed(self.names))? {
            match key {
                Key::Known(i) => {
                    let v: &'de RawValue = map.next_value()?;
                    if self.ranges[i].is_some() {
                        // JSON leaves a repeated name's meaning open; taking
                        // either value would be a guess the user never sees.
                        odd.get_or_insert_with(|| OddKey::Repeated(self.names[i].clone()));
                        continue;
                    }
                    let start = v.get().as_ptr() as usize - self.base;
                    self.ranges[i] = Some((start, start + v.get().len()));
                }
                Key::Unknown(k) => {
                    map.next_value::<IgnoredAny>()?;
                    odd.get_or_insert(OddKey::Unknown(k));
                }
            }
        }
        Ok(odd)
    }
}

/// A parsed index cell, with the checks the schema adds beyond its column
/// type (an `attributes` object against the tenant's attribute schema).
fn checked_cell(schema: &Schema, c: usize, v: Value) -> Result<Value, RowProblem> {
    match v {
        Value::Json(json)
            if schema.checks_attribute_object && schema.index.columns[c].name == "attributes" =>
        {
            schema.check_attribute_object(&json)
        }
        v => Ok(v),
    }
}

/// Values in slot order: index columns first, then attributes.
fn parse_json_line(
    schema: &Schema,
    names: &[String],
    slots: &[Slot],
    ranges: &mut [Option<(usize, usize)>],
    text: &str,
) -> Result<Vec<Value>, RowProblem> {
    ranges.fill(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let visitor = LineVisitor {
        base: text.as_ptr() as usize,
        names,
        ranges,
    };
    let odd = de
        .deserialize_map(visitor)
        .and_then(|u| de.end().map(|()| u))
        .map_err(|e| RowProblem {
            code: "invalid_json",
            column: None,
            message: format!("Line is not a JSON object: {e}"),
        })?;
    match odd {
        None => {}
        Some(OddKey::Unknown(extra)) => {
            return Err(RowProblem {
                code: "unknown_field",
                message: format!("Field '{extra}' is not among the first line's fields"),
                column: Some(extra),
            });
        }
        Some(OddKey::Repeated(name)) => {
            return Err(RowProblem {
                code: "repeated_field",
                message: format!("Field '{name}' appears more than once in the line"),
                column: Some(name),
            });
        }
    }
    let mut values = Vec::with_capacity(slots.len());
    let mut attributes = Vec::new();
    for (slot, range) in slots.iter().zip(ranges.iter()) {
        let raw = range.map(|(start, end)| &text[start..end]);
        match slot {
            Slot::Column(c) => values.push(checked_cell(
                schema,
                *c,
                cell::parse_json(&schema.index.columns[*c], schema.is_identifier(*c), raw)?,
            )?),
            Slot::Attribute(a) => {
                let (name, ty) = &schema.attributes[*a];
                let spec = cell::Spec {
                    name,
                    ty: *ty,
                    required: false,
                };
                attributes.push(cell::json_cell(&spec, false, raw)?);
            }
            Slot::Ignored => {}
        }
    }
    values.append(&mut attributes);
    Ok(values)
}

#[cfg(test)]
mod tests;
