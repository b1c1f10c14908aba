//! placeholder, filled by the Slurm work
