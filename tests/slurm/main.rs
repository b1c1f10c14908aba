//! Slurm tests
