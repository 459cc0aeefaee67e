//! Reading and writing the tenant's data: import readers (CSV, JSON lines)
//! that validate every cell against an index's schema, export writers (CSV,
//! JSON, JSON lines), the failed-rows file and the first seed's wording of
//! row reports.
//!
//! Pure: no SQL, no async, no I/O beyond `std::io::Read`; everything
//! streams, one record at a time, so a file's size never sets the memory.

mod cell;
pub mod export;
pub mod failed_rows;
pub mod import;
pub mod report;
mod schema;

pub use cell::parse_time;
pub use export::{ExportFormat, ExportWriter, format_time};
pub use failed_rows::FailedRowsWriter;
pub use import::{
    ColumnProblem, FileError, ImportReader, InputFormat, MAX_RECORD_BYTES, OpenError, ParsedRow,
    RowProblem, detect_format,
};
pub use report::{format_group, row_message};
pub use schema::Schema;
