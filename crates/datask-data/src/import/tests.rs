use super::*;
use datask_core::index::{PRODUCTS, TRANSACTIONS, USERS};

fn reader<'a>(input: &'a [u8], index: &'static IndexDef) -> ImportReader<&'a [u8]> {
    ImportReader::open(input, detect_format(input, None), index).unwrap()
}

fn rows(input: &[u8], index: &'static IndexDef) -> Vec<ParsedRow> {
    reader(input, index).map(Result::unwrap).collect()
}

/// (row, code, column) of each rejected row.
fn problems(got: &[ParsedRow]) -> Vec<(i64, &'static str, Option<String>)> {
    got.iter()
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|p| (r.row, p.code, p.column.clone()))
        })
        .collect()
}

fn columns_error(input: &[u8], index: &'static IndexDef) -> Vec<String> {
    match ImportReader::open(input, detect_format(input, None), index) {
        Err(OpenError::Columns(p)) => p.into_iter().map(|p| p.message).collect(),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened"),
    }
}

fn file_error(input: &[u8], format: InputFormat) -> FileError {
    match ImportReader::open(input, format, &USERS) {
        Err(OpenError::File(e)) => e,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened"),
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn bom_crlf_and_quoted_newlines() {
    let input = b"\xEF\xBB\xBFproduct_id,name,price\r\np1,\"two\r\nlines\",1.5\r\np2,plain,2\r\n\"p3\",\"three\nmore\nlines\",\r\np4,x,3";
    let r = reader(input, &PRODUCTS);
    assert_eq!(r.columns(), [0, 1, 3]);
    assert_eq!(r.column_names(), ["product_id", "name", "price"]);
    let got: Vec<ParsedRow> = r.map(Result::unwrap).collect();
    let numbered: Vec<(i64, &str)> = got.iter().map(|r| (r.row, r.raw.as_str())).collect();
    assert_eq!(
        numbered,
        [
            (2, "p1,\"two\r\nlines\",1.5"),
            (3, "p2,plain,2"),
            (4, "p3,\"three\nmore\nlines\","),
            (5, "p4,x,3"),
        ],
        "records are numbered, not lines"
    );
    assert_eq!(
        got[0].outcome,
        Ok(vec![text("p1"), text("two\r\nlines"), Value::Number(1.5)])
    );
    assert_eq!(
        got[2].outcome,
        Ok(vec![text("p3"), text("three\nmore\nlines"), Value::Null])
    );
}

#[test]
fn a_bom_before_a_quoted_header_name() {
    let got = rows(b"\xEF\xBB\xBF\"product_id\",name\np1,n\n", &PRODUCTS);
    assert_eq!(got[0].outcome, Ok(vec![text("p1"), text("n")]));
}

#[test]
fn header_names_are_case_sensitive_and_trimmed() {
    assert_eq!(
        columns_error(b"user_id,Email\n", &USERS),
        ["Column 'Email' is not a recognized field of index 'users'"]
    );
    let got = rows(b"user_id , email\nu1,a@b.c\n", &USERS);
    assert_eq!(got[0].outcome, Ok(vec![text("u1"), text("a@b.c")]));
}

#[test]
fn row_problems_are_named() {
    let input = b"product_id,price,active\np1,1,true\n,2,true\np3,x,true\np4,1\np5,1,maybe\np6,1,true,extra\n  ,1,1\n";
    let got = rows(input, &PRODUCTS);
    assert_eq!(
        problems(&got),
        [
            (3, "missing_identifier", Some("product_id".into())),
            (4, "invalid_value", Some("price".into())),
            (5, "ragged_row", None),
            (6, "invalid_value", Some("active".into())),
            (7, "ragged_row", None),
            (8, "missing_identifier", Some("product_id".into())),
        ]
    );
    let message = |i: usize| got[i].outcome.as_ref().unwrap_err().message.clone();
    assert_eq!(message(2), "Column 'price' has 'x', expected a number");
    assert_eq!(message(3), "Row has 2 fields, the header has 3");
    assert_eq!(message(5), "Row has 4 fields, the header has 3");
    assert_eq!(
        message(4),
        "Column 'active' has 'maybe', expected true or false"
    );
    // Bad rows keep their text for the failed-rows file.
    assert_eq!(got[3].raw, "p4,1");
    assert_eq!(got[5].raw, "p6,1,true,extra");
}

#[test]
fn a_rows_first_problem_is_reported() {
    let got = rows(
        b"transaction_id,amount,created_at\n,x,y\nt2,x,y\n",
        &TRANSACTIONS,
    );
    assert_eq!(
        problems(&got),
        [
            (2, "missing_identifier", Some("transaction_id".into())),
            (3, "invalid_value", Some("amount".into())),
        ]
    );
}

#[test]
fn every_type_in_a_file() {
    let input = b"user_id,email_opt_in,created_at,attributes\n\
        u1,yes,2026-01-02,\"{\"\"tier\"\": \"\"gold\"\"}\"\n\
        u2,0,2026-01-02 03:04:05,\n\
        u3,,2026-01-02T03:04:05.5+01:00,{}\n\
        u4,maybe,,\n\
        u5,1,2026-01-32,\n\
        u6,1,,[1]\n";
    let got = rows(input, &USERS);
    let day = 1_767_312_000_000_000;
    assert_eq!(
        got[0].outcome,
        Ok(vec![
            text("u1"),
            Value::Boolean(true),
            Value::Time(day),
            Value::Json("{\"tier\": \"gold\"}".into())
        ])
    );
    assert_eq!(
        got[1].outcome,
        Ok(vec![
            text("u2"),
            Value::Boolean(false),
            Value::Time(day + 11_045_000_000),
            Value::Null
        ])
    );
    assert_eq!(
        got[2].outcome,
        Ok(vec![
            text("u3"),
            Value::Null,
            Value::Time(day + 7_445_500_000),
            Value::Json("{}".into())
        ])
    );
    assert_eq!(
        problems(&got),
        [
            (5, "invalid_value", Some("email_opt_in".into())),
            (6, "invalid_value", Some("created_at".into())),
            (7, "invalid_value", Some("attributes".into())),
        ]
    );
    assert_eq!(
        got[5].outcome.as_ref().unwrap_err().message,
        "Column 'attributes' has '[1]', expected a JSON object"
    );
}

#[test]
fn invalid_utf8_in_a_cell() {
    let got = rows(b"product_id,name,price\np1,caf\xE9,x\np2,ok,1\n", &PRODUCTS);
    let p = got[0].outcome.as_ref().unwrap_err();
    assert_eq!(
        (p.code, p.column.as_deref(), p.message.as_str()),
        (
            "invalid_utf8",
            Some("name"),
            "Column 'name' is not valid UTF-8"
        )
    );
    assert_eq!(got[0].raw, "p1,caf\u{FFFD},x");
    assert!(got[1].outcome.is_ok(), "the next row is read as usual");
}

#[test]
fn empty_file_and_header_only() {
    for empty in [&b""[..], b"\n", b"\r\n\r\n", b"\xEF\xBB\xBF", b"  \n"] {
        let e = file_error(empty, InputFormat::Csv);
        assert!(matches!(e, FileError::Empty), "{empty:?}");
        assert_eq!(e.to_string(), "the file is empty");
    }
    for empty in [&b""[..], b"\n\n", b"\xEF\xBB\xBF \n"] {
        assert!(matches!(
            file_error(empty, InputFormat::JsonLines),
            FileError::Empty
        ));
    }
    assert!(rows(b"user_id,email\n", &USERS).is_empty());
    assert!(rows(b"user_id,email", &USERS).is_empty());
    assert!(rows(b"user_id,email\r\n\r\n", &USERS).is_empty());
}

#[test]
fn invalid_utf8_in_the_header() {
    let e = file_error(b"user_id,em\xFFail\n", InputFormat::Csv);
    assert!(matches!(
        e,
        FileError::HeaderEncoding { column: 2, byte: 3 }
    ));
    assert_eq!(
        e.to_string(),
        "the header is not valid UTF-8: column 2 has an invalid byte at byte 3 of its name"
    );
    let e = file_error(b"\n{\"user_id\":\"\xFF\"}\n", InputFormat::JsonLines);
    assert_eq!(
        e.to_string(),
        "line 2 is not valid UTF-8 (byte 13 of the line)"
    );
}

#[test]
fn all_column_problems_together() {
    let got = columns_error(b"email,first.name,LTV,email,,email\nx,y,z,w,v,u\n", &USERS);
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
    match ImportReader::open(&b"user_id,x\n"[..], InputFormat::Csv, &USERS) {
        Err(e @ OpenError::Columns(_)) => assert_eq!(
            e.to_string(),
            "Column 'x' is not a recognized field of index 'users'"
        ),
        _ => panic!(),
    }
}

#[test]
fn json_lines() {
    let input = b"{\"product_id\":\"p1\",\"price\":1.5,\"active\":true}\r\n\
        \n\
        [1]\n\
        {\"product_id\":\"p2\",\"colour\":\"red\"}\n\
        {\"product_id\":\"p3\",\"price\":\"2\"}\n\
        {\"price\":3}\n\
        {\"product_id\":\"p5\",\"price\":\"abc\"}\n\
        {\"product_id\":\"p6\",\n\
        \x20 {\"active\":\"no\",\"product_id\":7,\"price\":null}  \n\
        {\"product_id\":\"p\\u00e9\",\"active\":1}\n\
        {\"product_id\":\"p9\",\"active\":\"caf\xE9\"}\n\
        {\"product_id\":\"p10\"} {}\n\
        {\"product_id\":\"p11\",\"product_id\":\"p12\"}";
    let r = reader(input, &PRODUCTS);
    assert_eq!(r.format(), InputFormat::JsonLines);
    assert_eq!(
        r.columns(),
        [0, 3, 5],
        "the first object's keys, in its order"
    );
    let got: Vec<ParsedRow> = r.map(Result::unwrap).collect();
    let summary: Vec<(i64, Result<Vec<Value>, &str>)> = got
        .iter()
        .map(|r| (r.row, r.outcome.clone().map_err(|p| p.code)))
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                Ok(vec![text("p1"), Value::Number(1.5), Value::Boolean(true)])
            ),
            (3, Err("invalid_json")),
            (4, Err("unknown_field")),
            (5, Ok(vec![text("p3"), Value::Number(2.0), Value::Null])),
            (6, Err("missing_identifier")),
            (7, Err("invalid_value")),
            (8, Err("invalid_json")),
            (9, Ok(vec![text("7"), Value::Null, Value::Boolean(false)])),
            (10, Ok(vec![text("pé"), Value::Null, Value::Boolean(true)])),
            (11, Err("invalid_utf8")),
            (12, Err("invalid_json")),
            (13, Err("repeated_field")),
        ]
    );
    let p = |i: usize| got[i].outcome.clone().unwrap_err();
    assert_eq!(got[1].raw, "[1]");
    assert_eq!(
        got[7].raw,
        "{\"active\":\"no\",\"product_id\":7,\"price\":null}"
    );
    assert_eq!(
        (p(2).column, p(2).message),
        (
            Some("colour".into()),
            "Field 'colour' is not among the first line's fields".into()
        )
    );
    assert_eq!(p(5).message, "Column 'price' has 'abc', expected a number");
    assert_eq!(
        (p(11).column, p(11).message),
        (
            Some("product_id".into()),
            "Field 'product_id' appears more than once in the line".into()
        ),
        "a repeated key is an error, not a guess at which value counts"
    );
    assert!(
        p(1).message.starts_with("Line is not a JSON object"),
        "{}",
        p(1).message
    );
}

#[test]
fn json_lines_column_problems() {
    assert_eq!(
        columns_error(b"{\"id\":1,\"price\":2,\"Name\":3}\n", &PRODUCTS),
        [
            "Column 'id' is not a recognized field of index 'products'",
            "Column 'Name' is not a recognized field of index 'products'",
            "Column 'product_id' is required: it identifies the rows of index 'products'",
        ]
    );
    assert_eq!(
        columns_error(b"{\"product_id\":1,\"price\":2,\"price\":3}\n", &PRODUCTS),
        ["Column 'price' appears more than once"],
        "the first line's keys are its header, and a header names a column once"
    );
    let e = file_error(b"[1,2]\n{\"user_id\":\"u\"}\n", InputFormat::JsonLines);
    assert!(
        e.to_string()
            .starts_with("line 1 is not a JSON object, so it cannot name the columns"),
        "{e}"
    );
    let e = file_error(b"\n\n{\"user_id\":\n", InputFormat::JsonLines);
    assert!(matches!(e, FileError::FirstLine { line: 3, .. }), "{e}");
}

#[test]
fn json_lines_with_a_bom_and_a_json_column() {
    let input = b"\xEF\xBB\xBF{\"user_id\":\"u1\",\"attributes\":{\"tier\": \"gold\", \"n\": [1]}}\n{\"user_id\":\"u2\",\"attributes\":\"{}\"}\n{\"user_id\":\"u3\",\"attributes\":[]}\n";
    let got = rows(input, &USERS);
    assert_eq!(
        got[0].outcome,
        Ok(vec![
            text("u1"),
            Value::Json("{\"tier\": \"gold\", \"n\": [1]}".into())
        ])
    );
    assert_eq!(
        got[1].outcome,
        Ok(vec![text("u2"), Value::Json("{}".into())])
    );
    assert_eq!(
        problems(&got),
        [(3, "invalid_value", Some("attributes".into()))]
    );
}

#[test]
fn skip_rows_resumes_numbering() {
    let input = b"product_id\np1\n\"p\n2\"\np3\n";
    let mut r = reader(input, &PRODUCTS);
    assert_eq!(r.skip_rows(2).unwrap(), 2);
    let next = r.next_row().unwrap().unwrap();
    assert_eq!((next.row, next.raw.as_str()), (4, "p3"));
    assert!(r.next_row().is_none());
    assert_eq!(reader(input, &PRODUCTS).skip_rows(10).unwrap(), 3);
    let input = b"{\"product_id\":\"a\"}\n\n{\"product_id\":\"b\"}\n{\"product_id\":\"c\"}\n";
    let mut r = reader(input, &PRODUCTS);
    assert_eq!(r.skip_rows(1).unwrap(), 1);
    assert_eq!(r.next_row().unwrap().unwrap().row, 3);
    let mut r = reader(input, &PRODUCTS);
    assert_eq!(r.skip_rows(2).unwrap(), 2);
    let next = r.next_row().unwrap().unwrap();
    assert_eq!((next.row, next.raw.as_str()), (4, "{\"product_id\":\"c\"}"));
    assert_eq!(reader(input, &PRODUCTS).skip_rows(0).unwrap(), 0);
}

#[test]
fn format_detection() {
    assert_eq!(detect_format(b"{}", Some("x.CSV")), InputFormat::Csv);
    assert_eq!(
        detect_format(b"a,b", Some("x.ndjson")),
        InputFormat::JsonLines
    );
    assert_eq!(
        detect_format(b"a,b", Some("x.jsonl")),
        InputFormat::JsonLines
    );
    assert_eq!(
        detect_format(b"a,b", Some("x.json")),
        InputFormat::JsonLines
    );
    assert_eq!(
        detect_format(b"\xEF\xBB\xBF  {", Some("upload.bin")),
        InputFormat::JsonLines
    );
    assert_eq!(detect_format(b"user_id", None), InputFormat::Csv);
    assert_eq!(detect_format(b"", None), InputFormat::Csv);
}

#[test]
fn an_unclosed_quote_stops_at_the_record_limit() {
    let mut input = b"product_id,name\np1,\"never closed\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 300_000));
    let mut r = reader(&input, &PRODUCTS);
    r.set_record_limit(100_000);
    match r.next_row() {
        Some(Err(e @ FileError::RecordTooLong { row: 2, .. })) => assert_eq!(
            e.to_string(),
            "row 2 is longer than 100000 bytes (is a quote left open?)"
        ),
        other => panic!("{other:?}"),
    }
    let mut input = b"{\"product_id\":\"p1\"}\n{\"product_id\":\"".to_vec();
    input.extend(std::iter::repeat_n(b'x', 300_000));
    let mut r = reader(&input, &PRODUCTS);
    r.set_record_limit(100_000);
    assert!(r.next_row().unwrap().is_ok());
    assert!(matches!(
        r.next_row(),
        Some(Err(FileError::RecordTooLong { row: 2, .. }))
    ));
}

#[test]
fn io_errors_are_file_errors() {
    /// Serves its bytes, then fails.
    struct Failing(&'static [u8]);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = self.0.read(buf)?;
            Ok(n)
        }
    }
    let mut r =
        ImportReader::open(Failing(b"product_id\np1\n"), InputFormat::Csv, &PRODUCTS).unwrap();
    assert!(r.next_row().unwrap().is_ok());
    let e = r.next_row().unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        "the file could not be read near row 3: disk on fire"
    );
}

/// A users file made as it is read: the whole file never exists, and
/// reading it holds one record at a time.
struct Lazy {
    next: u64,
    rows: u64,
    pending: Vec<u8>,
    at: usize,
    json: bool,
}

impl Lazy {
    fn new(rows: u64, json: bool) -> Self {
        Lazy {
            next: 0,
            rows,
            pending: Vec::new(),
            at: 0,
            json,
        }
    }
}

impl Read for Lazy {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write;
        if self.at == self.pending.len() {
            self.pending.clear();
            self.at = 0;
            while self.pending.len() < 4096 && self.next <= self.rows {
                let i = self.next;
                let _ = match (self.next, self.json) {
                    (0, false) => writeln!(
                        self.pending,
                        "user_id,email,email_opt_in,created_at,attributes"
                    ),
                    (0, true) => Ok(()),
                    (_, false) => writeln!(
                        self.pending,
                        "u{i},u{i}@example.com,{},2026-01-{:02}T10:00:00Z,\"{{\"\"n\"\":{i}}}\"",
                        i.is_multiple_of(2),
                        i % 28 + 1
                    ),
                    (_, true) => writeln!(
                        self.pending,
                        "{{\"user_id\":\"u{i}\",\"email\":\"u{i}@example.com\",\"email_opt_in\":{},\"created_at\":\"2026-01-{:02}\",\"attributes\":{{\"n\":{i}}}}}",
                        i.is_multiple_of(2),
                        i % 28 + 1
                    ),
                };
                self.next += 1;
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn streams_without_holding_the_file() {
    for json in [false, true] {
        let r = ImportReader::open(
            Lazy::new(200_000, json),
            if json {
                InputFormat::JsonLines
            } else {
                InputFormat::Csv
            },
            &USERS,
        )
        .unwrap();
        let mut n = 0;
        let mut last = 0;
        for row in r {
            let row = row.unwrap();
            let values = row.outcome.unwrap();
            assert_eq!(values.len(), 5);
            last = row.row;
            n += 1;
        }
        // CSV numbers records from the header (row 1); JSON lines by line.
        assert_eq!((n, last), (200_000, if json { 200_000 } else { 200_001 }));
    }
}

/// The attribute object is written straight to text: the same text a JSON
/// map of the same entries would print, empty values left out.
#[test]
fn attribute_objects_print_as_a_json_map_would() {
    use serde_json::json;
    let plan = ProfilePlan {
        n_columns: 1,
        identifier_at: None,
        user_id_at: Some(0),
        attributes: [
            "t", "n", "whole", "nan", "i", "b", "at", "j", "empty", "bad json",
        ]
        .map(String::from)
        .to_vec(),
    };
    let attrs = vec![
        Value::Text("a \"quoted\" é\n\u{1}".into()),
        Value::Number(12.25),
        Value::Number(5000.0),
        Value::Number(f64::NAN),
        Value::Integer(-7),
        Value::Boolean(true),
        Value::Time(1_767_225_600_123_456),
        Value::Json(r#"{"x": [1, "y"]}"#.into()),
        Value::Null,
        Value::Json("{".into()),
    ];
    let mut want = serde_json::Map::new();
    want.insert("t".into(), json!("a \"quoted\" é\n\u{1}"));
    want.insert("n".into(), json!(12.25));
    want.insert("whole".into(), json!(5000.0));
    want.insert("i".into(), json!(-7));
    want.insert("b".into(), json!(true));
    want.insert(
        "at".into(),
        json!(datask_core::settings::attribute_time(1_767_225_600_123_456)),
    );
    want.insert("j".into(), json!({"x": [1, "y"]}));
    let mut values = vec![Value::Text("u1".into())];
    values.extend(attrs);
    plan.finish(&mut values);
    assert_eq!(
        values,
        vec![
            Value::Text("u1".into()),
            Value::Json(serde_json::Value::Object(want).to_string())
        ]
    );
    // Nothing given: no object at all.
    let mut values = vec![Value::Text("u2".into())];
    values.extend(std::iter::repeat_n(Value::Null, 10));
    plan.finish(&mut values);
    assert_eq!(values, vec![Value::Text("u2".into()), Value::Null]);
}

/// The generic import into `users` checks the `attributes` object as
/// `profile_import` checks attribute columns: known and enabled names,
/// values of their types; a good object is written as profile_import
/// writes one.
#[test]
fn the_users_index_checks_its_attribute_object() {
    use datask_core::settings::{Attribute, AttributeType, ProfileSettings};
    let attribute = |name: &str, ty, enabled| Attribute {
        name: name.into(),
        ty,
        enabled,
        pii: false,
    };
    let settings = ProfileSettings {
        attributes: vec![
            attribute("tier", AttributeType::String, true),
            attribute("score", AttributeType::Number, true),
            attribute("vip", AttributeType::Boolean, true),
            attribute("old", AttributeType::String, false),
        ],
        ..Default::default()
    };
    let input = "user_id,attributes\n\
        u1,\"{\"\"tier\"\":\"\"gold\"\",\"\"score\"\":\"\"12.5\"\",\"\"vip\"\":true}\"\n\
        u2,\"{\"\"color\"\":\"\"red\"\"}\"\n\
        u3,\"{\"\"old\"\":\"\"x\"\"}\"\n\
        u4,\"{\"\"score\"\":\"\"high\"\"}\"\n\
        u5,\"{\"\"vip\"\":null}\"\n";
    let read = |input: &str, format| -> Vec<ParsedRow> {
        ImportReader::open_with(input.as_bytes(), format, Schema::users_index(&settings))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let got = read(input, InputFormat::Csv);
    let messages: Vec<_> = got
        .iter()
        .map(|r| r.outcome.as_ref().err().map(|p| p.message.clone()))
        .collect();
    assert_eq!(
        messages,
        vec![
            None,
            Some("Column 'attributes' has attribute 'color', which is not a recognized attribute".into()),
            Some("Column 'attributes' has attribute 'old', which is not set to be a profile attribute".into()),
            Some("Column 'attributes': attribute 'score' has 'high', expected a number".into()),
            None,
        ]
    );
    assert_eq!(
        got[0].outcome.as_ref().unwrap()[1],
        Value::Json(r#"{"tier":"gold","score":12.5,"vip":true}"#.into())
    );
    assert_eq!(got[4].outcome.as_ref().unwrap()[1], Value::Null);
    // JSON lines: the same checks.
    let lines = "{\"user_id\":\"u1\",\"attributes\":{\"score\":3}}\n{\"user_id\":\"u2\",\"attributes\":{\"nope\":1}}\n";
    let got = read(lines, InputFormat::JsonLines);
    assert_eq!(
        got[0].outcome.as_ref().unwrap()[1],
        Value::Json(r#"{"score":3.0}"#.into())
    );
    assert_eq!(
        problems(&got),
        vec![(2, "unknown_attribute", Some("attributes".into()))]
    );
    // The plain index schema still takes any object.
    let plain: Vec<_> = rows(input.as_bytes(), &USERS);
    assert!(problems(&plain).is_empty());
}

#[test]
fn wide_headers_are_refused_early_and_long_names_shortened() {
    // One pass over the header: 2,000 distinct unknown columns map at once
    // (checking each against the ones before it took seconds at 20,000).
    let header: Vec<String> = (0..crate::schema::MAX_COLUMNS)
        .map(|i| format!("c{i}"))
        .collect();
    let input = format!("user_id,{}\nu1\n", header[1..].join(","));
    let problems = columns_error(input.as_bytes(), &USERS);
    assert_eq!(problems.len(), crate::schema::MAX_COLUMNS - 1);
    let input = format!("user_id,{}\nu1\n", header.join(","));
    assert_eq!(
        columns_error(input.as_bytes(), &USERS),
        ["The header has 2001 columns; at most 2000 are accepted"]
    );
    let long = "x".repeat(5_000);
    let input = format!("user_id,{long},{long}\nu1,,\n");
    let problems = columns_error(input.as_bytes(), &USERS);
    assert_eq!(
        problems,
        [
            format!(
                "Column '{}…' is not a recognized field of index 'users'",
                "x".repeat(100)
            ),
            format!("Column '{}…' appears more than once", "x".repeat(100)),
        ]
    );
}

#[test]
fn a_wide_first_json_line_is_refused_like_a_wide_header() {
    let keys: Vec<String> = (0..50_000).map(|i| format!("\"k{i}\":1")).collect();
    let input = format!("{{\"user_id\":\"u1\",{}}}\n", keys.join(","));
    assert_eq!(
        columns_error(input.as_bytes(), &USERS),
        ["The header has 50001 columns; at most 2000 are accepted"]
    );
}

/// Serves its bytes one at a time, so that every quote meets a read's edge.
struct ByteByByte<'a>(&'a [u8]);
impl Read for ByteByByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.is_empty()) {
            (Some((b, rest)), false) => {
                buf[0] = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

fn all_rows<R: Read>(r: ImportReader<R>) -> Vec<Result<ParsedRow, FileError>> {
    r.collect()
}

/// csv-core closes a quoted field left open at the end of the file
/// without a word, taking every later line into it: the import must stop
/// at that row and name the column, not import one row and lose the rest.
#[test]
fn a_quote_left_open_at_the_end_is_an_error_naming_row_and_column() {
    let input = b"product_id,name,category\np1,ok,a\np2,\"open,b\np3,x,c\np4,y,d\n";
    for got in [
        all_rows(reader(input, &PRODUCTS)),
        all_rows(ImportReader::open(ByteByByte(input), InputFormat::Csv, &PRODUCTS).unwrap()),
    ] {
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0]
                .as_ref()
                .is_ok_and(|r| r.row == 2 && r.outcome.is_ok())
        );
        match &got[1] {
            Err(e @ FileError::QuoteLeftOpen { row: 3, column }) if column == "name" => {
                assert!(
                    e.to_string()
                        .contains("row 3: the quoted value in column 'name' is never closed"),
                    "{e}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
    // In the header too.
    match ImportReader::open(
        &b"product_id,\"name\np1,x\n"[..],
        InputFormat::Csv,
        &PRODUCTS,
    ) {
        Err(OpenError::File(FileError::QuoteLeftOpen { row: 1, column })) => {
            assert_eq!(column, "name")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Quoting that closes is left alone, however it meets a read's edge:
/// doubled quotes, line breaks inside quotes, a quote inside an unquoted
/// value (a plain character to csv-core), an empty quoted value, a last
/// line without a line break, CRLF.
#[test]
fn quotes_that_close_are_not_errors() {
    let input = b"product_id,name,category\r\np1,\"a \"\"quoted\"\" word\",x\r\np2,\"two\nlines\",y\np3,plain\"quote,z\n\"p4\",\"\",\"\"\"\"\np5,x,\"end\"";
    for got in [
        all_rows(reader(input, &PRODUCTS)),
        all_rows(ImportReader::open(ByteByByte(input), InputFormat::Csv, &PRODUCTS).unwrap()),
    ] {
        let rows: Vec<_> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        assert!(rows.iter().all(|r| r.outcome.is_ok()), "{rows:?}");
    }
}
