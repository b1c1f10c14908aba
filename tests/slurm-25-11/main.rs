//! The Slurm suite (`tests/slurm/`) against Slurm 25.11 built from source:
//! the harness picks the release from this binary's name
//! (`ckpt_tests::slurm::Release`).

#[path = "../slurm/main.rs"]
mod suite;
