//! Shared test harness.

pub mod cr;
pub mod slurm;
