//! Shared test harness.

pub mod cr;
pub mod faults;
pub mod slurm;
