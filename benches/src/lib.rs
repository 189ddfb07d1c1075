//! Shared workloads of the criterion benchmarks and the comparison runner.
#![deny(unsafe_code)]

pub mod floor;
