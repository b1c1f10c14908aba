//! Shared test harness.

pub mod slurm;
