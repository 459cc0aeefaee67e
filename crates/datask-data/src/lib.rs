//! Import readers, export writers, the failed-rows file and row reports.
//! Pure: no SQL, no async; everything streams.

mod cell;
pub mod export;
pub mod failed_rows;
pub mod import;
pub mod report;

pub use export::{ExportFormat, ExportWriter};
pub use failed_rows::FailedRowsWriter;
pub use import::{
    ColumnProblem, FileError, ImportReader, InputFormat, OpenError, ParsedRow, RowProblem,
    detect_format,
};
