//! Command-line front ends of the library modules (one file per command family); `main.rs`
//! only dispatches here. Uses `anyhow`: this is the edge.
pub mod align;
pub mod bench;
pub mod bench_daemon;
pub mod bench_encoders;
pub mod bench_klot;
pub mod bench_realign;
pub mod bench_scaling;
pub mod data_args;
pub mod demo;
pub mod encoders;
pub mod eval;
pub mod experiment;
pub mod index;
pub mod plot;
pub mod simulate;
