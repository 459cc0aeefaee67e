//! The failed-rows file: each rejected row verbatim, after its row number,
//! error code and message, so it can be fixed and imported again once the
//! three first columns are dropped.
//!
//! CSV input: `_row,_error_code,_error,<the file's header>`, each record's
//! fields back in their columns. JSON-lines input:
//! `_row,_error_code,_error,_record`, the line whole in `_record`.

use crate::import::InputFormat;

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(1 << 16))
}

pub struct FailedRowsWriter {
    format: InputFormat,
    writer: csv::Writer<Vec<u8>>,
    record: csv::StringRecord,
    parsed: csv::StringRecord,
}

impl FailedRowsWriter {
    /// `header`: the imported file's column names, in file order (CSV);
    /// ignored for JSON lines.
    pub fn new(format: InputFormat, header: &[String]) -> Self {
        let mut writer = csv_writer();
        let mut names = csv::StringRecord::from(vec!["_row", "_error_code", "_error"]);
        match format {
            InputFormat::Csv => header.iter().for_each(|h| names.push_field(h)),
            InputFormat::JsonLines => names.push_field("_record"),
        }
        let _ = writer.write_record(&names);
        FailedRowsWriter {
            format,
            writer,
            record: csv::StringRecord::new(),
            parsed: csv::StringRecord::new(),
        }
    }

    /// As [`Self::new`], with the header given as the file's header line.
    pub fn from_header_line(format: InputFormat, line: &str) -> Self {
        let mut header = csv::StringRecord::new();
        let _ = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(line.as_bytes())
            .read_record(&mut header);
        let names: Vec<String> = header.iter().map(str::to_string).collect();
        Self::new(format, &names)
    }

    /// One rejected row: its number, code and message, then `raw` (the
    /// record as one CSV line, or the JSON line).
    pub fn write(&mut self, row: i64, code: &str, message: &str, raw: &str) {
        self.record.clear();
        self.record.push_field(&row.to_string());
        self.record.push_field(code);
        self.record.push_field(message);
        match self.format {
            InputFormat::Csv => {
                let got = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .buffer_capacity(raw.len().clamp(64, 1 << 16))
                    .from_reader(raw.as_bytes())
                    .read_record(&mut self.parsed);
                match got {
                    Ok(true) => self.parsed.iter().for_each(|f| self.record.push_field(f)),
                    // An empty line is a record of one empty field.
                    Ok(false) => self.record.push_field(""),
                    Err(_) => self.record.push_field(raw),
                }
            }
            InputFormat::JsonLines => self.record.push_field(raw),
        }
        let _ = self.writer.write_record(&self.record);
    }

    /// Bytes written and not yet taken (less up to 8 KiB the CSV writer
    /// holds until [`Self::take_chunk`]).
    pub fn buffered(&self) -> usize {
        self.writer.get_ref().len()
    }

    /// Drains what is written so far.
    pub fn take_chunk(&mut self) -> Vec<u8> {
        // The header is behind us: a fresh writer carries on.
        std::mem::replace(&mut self.writer, csv_writer())
            .into_inner()
            .unwrap_or_default()
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.take_chunk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{ImportReader, ParsedRow};
    use datask_core::index::{PRODUCTS, Value};

    #[test]
    fn rows_verbatim_after_the_reason() {
        let mut w = FailedRowsWriter::new(InputFormat::Csv, &["product_id".into(), "name".into()]);
        w.write(
            3,
            "missing_identifier",
            "Column 'product_id' is empty",
            ",Nameless",
        );
        let mut out = w.take_chunk();
        assert_eq!(w.buffered(), 0);
        w.write(
            4,
            "invalid_value",
            "Column 'price' has 'a,b'",
            "p2,\"quoted, \"\"name\"\"\non two lines\"",
        );
        w.write(
            5,
            "ragged_row",
            "Row has 3 fields, the header has 2",
            "p3,x,y",
        );
        w.write(
            6,
            "missing_identifier",
            "Column 'product_id' is empty",
            "\"\"",
        );
        out.extend(w.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "_row,_error_code,_error,product_id,name\n\
             3,missing_identifier,Column 'product_id' is empty,,Nameless\n\
             4,invalid_value,\"Column 'price' has 'a,b'\",p2,\"quoted, \"\"name\"\"\non two lines\"\n\
             5,ragged_row,\"Row has 3 fields, the header has 2\",p3,x,y\n\
             6,missing_identifier,Column 'product_id' is empty,\n"
        );
    }

    #[test]
    fn json_lines_keep_the_line_whole() {
        let mut w = FailedRowsWriter::new(InputFormat::JsonLines, &[]);
        w.write(2, "invalid_json", "Line is not a JSON object", "[1, 2]");
        w.write(
            5,
            "unknown_field",
            "Field 'x' is not among the first line's fields",
            r#"{"product_id":"p","x":"a,b"}"#,
        );
        assert_eq!(
            String::from_utf8(w.finish()).unwrap(),
            "_row,_error_code,_error,_record\n\
             2,invalid_json,Line is not a JSON object,\"[1, 2]\"\n\
             5,unknown_field,Field 'x' is not among the first line's fields,\"{\"\"product_id\"\":\"\"p\"\",\"\"x\"\":\"\"a,b\"\"}\"\n"
        );
    }

    #[test]
    fn a_header_line() {
        let w = FailedRowsWriter::from_header_line(InputFormat::Csv, "product_id,\"odd, name\"");
        assert_eq!(
            String::from_utf8(w.finish()).unwrap(),
            "_row,_error_code,_error,product_id,\"odd, name\"\n"
        );
    }

    /// Rejected rows, fixed and stripped of the three first columns,
    /// import as the original rows would have.
    #[test]
    fn the_file_reimports_once_fixed() {
        let input = "product_id,name,price\n\
            p1,ok,1\n\
            p2,\"multi\nline, \"\"quoted\"\"\",abc\n\
            ,nameless,2\n\
            p4,\" spaced \",x\n";
        let reader = ImportReader::open(input.as_bytes(), InputFormat::Csv, &PRODUCTS).unwrap();
        let mut w = FailedRowsWriter::new(InputFormat::Csv, &reader.column_names());
        let rows: Vec<ParsedRow> = reader.map(Result::unwrap).collect();
        for r in &rows {
            if let Err(p) = &r.outcome {
                w.write(r.row, p.code, &p.message, &r.raw);
            }
        }
        let failed = w.finish();
        // The user's fix: drop the three first columns, correct the cells.
        let mut fixed = csv::Writer::from_writer(Vec::new());
        let mut records = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&failed[..]);
        let mut rows_seen = Vec::new();
        for (i, record) in records.records().enumerate() {
            let record = record.unwrap();
            let mut fields: Vec<String> = record.iter().skip(3).map(str::to_string).collect();
            if i > 0 {
                rows_seen.push(record[0].to_string());
                if fields[0].is_empty() {
                    fields[0] = "p3".into();
                }
                fields[2] = "9".into();
            }
            fixed.write_record(&fields).unwrap();
        }
        assert_eq!(rows_seen, ["3", "4", "5"]);
        let fixed = fixed.into_inner().unwrap();
        let again: Vec<Vec<Value>> = ImportReader::open(&fixed[..], InputFormat::Csv, &PRODUCTS)
            .unwrap()
            .map(|r| r.unwrap().outcome.unwrap())
            .collect();
        let text = |s: &str| Value::Text(s.into());
        assert_eq!(
            again,
            [
                vec![
                    text("p2"),
                    text("multi\nline, \"quoted\""),
                    Value::Number(9.0)
                ],
                vec![text("p3"), text("nameless"), Value::Number(9.0)],
                vec![text("p4"), text(" spaced "), Value::Number(9.0)],
            ]
        );
    }
}
