//! The failed-rows file: each rejected row verbatim, after its row number,
//! error code and message, so it can be fixed and imported again once the
//! three first columns are dropped.

use crate::import::InputFormat;

pub struct FailedRowsWriter {
    format: InputFormat,
    buf: Vec<u8>,
    writer: csv::Writer<Vec<u8>>,
}

impl FailedRowsWriter {
    /// `header`: the imported file's column names (CSV); JSON-lines input
    /// keeps each line whole in a `_record` column.
    pub fn new(format: InputFormat, header: &[String]) -> Self {
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        let mut names = vec!["_row".to_string(), "_error_code".into(), "_error".into()];
        match format {
            InputFormat::Csv => names.extend(header.iter().cloned()),
            InputFormat::JsonLines => names.push("_record".into()),
        }
        let _ = writer.write_record(&names);
        FailedRowsWriter {
            format,
            buf: Vec::new(),
            writer,
        }
    }

    pub fn write(&mut self, row: i64, code: &str, message: &str, raw: &str) {
        let mut record = csv::StringRecord::new();
        record.push_field(&row.to_string());
        record.push_field(code);
        record.push_field(message);
        let parsed = match self.format {
            InputFormat::Csv => csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(raw.as_bytes())
                .records()
                .next(),
            InputFormat::JsonLines => None,
        };
        match parsed {
            Some(Ok(fields)) => fields.iter().for_each(|f| record.push_field(f)),
            _ if raw.is_empty() && self.format == InputFormat::Csv => {}
            _ => record.push_field(raw),
        }
        let _ = self.writer.write_record(&record);
    }

    /// Drains what is written so far.
    pub fn take_chunk(&mut self) -> Vec<u8> {
        let _ = self.writer.flush();
        let inner = std::mem::replace(
            &mut self.writer,
            csv::WriterBuilder::new()
                .flexible(true)
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(Vec::new()),
        );
        self.buf.extend(inner.into_inner().unwrap_or_default());
        std::mem::take(&mut self.buf)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.take_chunk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        w.write(
            4,
            "invalid_value",
            "Column 'price' has 'a,b'",
            "p2,\"quoted, name\"",
        );
        out.extend(w.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "_row,_error_code,_error,product_id,name\n\
             3,missing_identifier,Column 'product_id' is empty,,Nameless\n\
             4,invalid_value,\"Column 'price' has 'a,b'\",p2,\"quoted, name\"\n"
        );
        let mut w = FailedRowsWriter::new(InputFormat::JsonLines, &[]);
        w.write(2, "invalid_json", "bad", "[1, 2]");
        assert_eq!(
            String::from_utf8(w.finish()).unwrap(),
            "_row,_error_code,_error,_record\n2,invalid_json,bad,\"[1, 2]\"\n"
        );
    }
}
