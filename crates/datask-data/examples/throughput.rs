//! Parse+validate throughput of a users CSV (and JSON lines), generated
//! lazily: `cargo run --release -p datask-data --example throughput [rows]`.

use std::io::Read;
use std::time::Instant;

use datask_core::index::USERS;
use datask_data::{ExportFormat, ExportWriter, ImportReader, InputFormat};

/// Makes a users file on the fly from a few hundred distinct rows.
struct Users {
    header: &'static [u8],
    lines: Vec<Vec<u8>>,
    next: usize,
    rows: usize,
    pending: Vec<u8>,
    at: usize,
}

impl Users {
    fn new(rows: usize, json: bool) -> Self {
        let lines = (0..512)
            .map(|i| {
                if json {
                    format!(
                        "{{\"user_id\":\"u{i:08}\",\"email\":\"user{i}@example.com\",\"mobile_number\":\"+3531{i:07}\",\"first_name\":\"First{i}\",\"last_name\":\"Last{i}\",\"country\":\"IE\",\"language\":\"en\",\"timezone\":\"Europe/Dublin\",\"email_opt_in\":true,\"sms_opt_in\":false,\"push_opt_in\":true,\"created_at\":\"2024-03-{:02}T10:{:02}:00Z\",\"last_active_at\":\"2025-01-{:02} 08:00:00\",\"attributes\":{{\"tier\":\"gold\",\"points\":{i}}}}}\n",
                        i % 28 + 1,
                        i % 60,
                        i % 28 + 1
                    )
                } else {
                    format!(
                        "u{i:08},user{i}@example.com,+3531{i:07},First{i},Last{i},IE,en,Europe/Dublin,true,no,1,2024-03-{:02}T10:{:02}:00Z,2025-01-{:02},\"{{\"\"tier\"\":\"\"gold\"\",\"\"points\"\":{i}}}\"\n",
                        i % 28 + 1,
                        i % 60,
                        i % 28 + 1
                    )
                }
                .into_bytes()
            })
            .collect();
        Users {
            header: if json {
                b""
            } else {
                b"user_id,email,mobile_number,first_name,last_name,country,language,timezone,email_opt_in,sms_opt_in,push_opt_in,created_at,last_active_at,attributes\n"
            },
            lines,
            next: 0,
            rows,
            pending: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Users {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            self.pending.clear();
            self.at = 0;
            if !self.header.is_empty() {
                self.pending.extend_from_slice(self.header);
                self.header = b"";
            }
            while self.pending.len() < 1 << 16 && self.next < self.rows {
                self.pending
                    .extend_from_slice(&self.lines[self.next % self.lines.len()]);
                self.next += 1;
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::args().nth(2);
    if only.as_deref() == Some("floor") {
        return floor(rows);
    }
    for (name, format) in [("csv", InputFormat::Csv), ("jsonl", InputFormat::JsonLines)] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let start = Instant::now();
        let mut reader = ImportReader::open(
            Users::new(rows, format == InputFormat::JsonLines),
            format,
            &USERS,
        )
        .unwrap();
        let (mut ok, mut bad) = (0u64, 0u64);
        while let Some(row) = reader.next_row() {
            match row.unwrap().outcome {
                Ok(_) => ok += 1,
                Err(_) => bad += 1,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "import {name}: {ok} good, {bad} bad in {secs:.2}s = {:.0} rows/s",
            (ok + bad) as f64 / secs
        );
    }
    if only.is_some() {
        return;
    }
    let mut reader = ImportReader::open(Users::new(1000, false), InputFormat::Csv, &USERS).unwrap();
    let sample: Vec<_> = std::iter::from_fn(|| reader.next_row())
        .map(|r| r.unwrap().outcome.unwrap())
        .collect();
    for format in [ExportFormat::Csv, ExportFormat::Json] {
        let start = Instant::now();
        let mut w = ExportWriter::new(format, &USERS);
        let mut bytes = 0;
        for i in 0..rows {
            w.write_row(&sample[i % sample.len()]);
            if w.buffered() >= 1 << 20 {
                bytes += w.take_chunk().len();
            }
        }
        bytes += w.finish().len();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "export {}: {bytes} bytes in {secs:.2}s = {:.0} rows/s",
            format.extension(),
            rows as f64 / secs
        );
    }
}

fn floor(rows: usize) {
    let start = Instant::now();
    let mut reader = ImportReader::open(Users::new(rows, false), InputFormat::Csv, &USERS).unwrap();
    let n = reader.skip_rows(rows as u64).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "skip csv (read only): {n} in {secs:.2}s = {:.0} rows/s",
        n as f64 / secs
    );
}
