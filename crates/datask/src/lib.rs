//! The `datask` binary's pieces, as a library so tests and benchmarks can
//! start the same server the binary does.

pub mod app;
pub mod client;
pub mod demo;
pub mod memory;
pub mod synth;
