//! What ckpt does for the MPI ranks of a Slurm step (docs/mpi.md): the
//! Open MPI settings it gives a step of `srun --mpi=pmix`, and what it adds
//! to a refusal of a rank's connection.

use std::ffi::OsString;

/// The Open MPI settings ckpt gives the ranks of a `--mpi=pmix` step, as
/// (variable, value, why), each only when the user did not set it
/// (`get` reads the task's environment).
pub fn open_mpi_settings(
    get: impl Fn(&str) -> Option<OsString>,
) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut set = Vec::new();
    if get("OMPI_MCA_btl").is_none() {
        // Each task runs in pid and user namespaces of its own, so the ranks
        // of one node all have pid 2: Open MPI's shared-memory transport
        // takes a neighbour's segment for its own and crashes at the first
        // message. Without it the ranks of a node talk over TCP, which a
        // job checkpoint keeps.
        set.push((
            "OMPI_MCA_btl",
            "^vader",
            "Open MPI's shared-memory transport cannot work between ranks in ckpt's per-task \
             namespaces",
        ));
    }
    if get("OMPI_MCA_mpi_preconnect_mpi").is_none() && get("OMPI_MCA_mpi_preconnect_all").is_none()
    {
        // Open MPI connects a pair of ranks at their first message, to the
        // address the peer published in MPI_Init; after a restart on other
        // nodes that is the old node's. Connected in MPI_Init, every pair's
        // connection is in the job's images and is made again between the
        // new nodes; and no checkpoint finds a connection from a peer
        // waiting unaccepted at a rank that is not inside MPI.
        set.push((
            "OMPI_MCA_mpi_preconnect_mpi",
            "1",
            "every pair of ranks connects in MPI_Init, so no connection is made after a restart \
             to the address a peer had before it",
        ));
    }
    set
}

/// A checkpoint of a task of an `srun --mpi=pmix` step refused for a
/// connection outside the job says, in case the task is an MPI rank, which
/// of a rank's connections ckpt keeps (to the other ranks, to its PMIx
/// server: docs/mpi.md) and what works for ranks `mpirun` started. The
/// step's MPI type alone does not tell a rank from another program
/// (clusters with `MpiDefault=pmix` give it to every step), so both are
/// said.
pub fn with_mpi_hint(e: String, mpi_type: Option<&str>) -> String {
    match mpi_type {
        Some(t) if t.starts_with("pmix") && e.contains("to a process outside the job") => format!(
            "{e}. If this task is an MPI rank (its step was started with `srun --mpi=pmix`): ckpt \
             keeps a rank's TCP connections to the other ranks of the job and to its PMIx server \
             (docs/mpi.md), and this connection is neither; ranks that `mpirun` starts across \
             nodes are not checkpointed yet: start them with `srun --mpi=pmix`"
        ),
        Some(t) if t.starts_with("pmi2") && e.contains("to a process outside the job") => format!(
            "{e}. If this task is an MPI rank (its step was started with `srun --mpi=pmi2`): its \
             PMI connection to slurmstepd is kept only for `srun --mpi=pmix` (docs/mpi.md); do not \
             set CKPT_EXTERNAL_SOCKETS=closed for it (the rank would lose its PMI server). Start \
             Open MPI ranks with `srun --mpi=pmix`; run MPICH's `mpiexec` inside the job on one \
             node"
        ),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mpi_ranks_get_each_setting_the_user_did_not_choose() {
        let names = |env: &'static [&'static str]| -> Vec<&'static str> {
            open_mpi_settings(|k| env.contains(&k).then(|| OsString::from("x")))
                .into_iter()
                .map(|(name, _, _)| name)
                .collect()
        };
        assert_eq!(names(&[]), ["OMPI_MCA_btl", "OMPI_MCA_mpi_preconnect_mpi"]);
        assert_eq!(names(&["OMPI_MCA_btl"]), ["OMPI_MCA_mpi_preconnect_mpi"]);
        assert_eq!(names(&["OMPI_MCA_mpi_preconnect_mpi"]), ["OMPI_MCA_btl"]);
        // The deprecated synonym counts as the user's choice too.
        assert_eq!(names(&["OMPI_MCA_mpi_preconnect_all"]), ["OMPI_MCA_btl"]);
        let values: Vec<_> = open_mpi_settings(|_| None)
            .into_iter()
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect();
        assert_eq!(
            values,
            ["OMPI_MCA_btl=^vader", "OMPI_MCA_mpi_preconnect_mpi=1"]
        );
    }

    #[test]
    fn pmix_ranks_refused_for_an_outside_connection_are_told_why() {
        let outside = "process 2: fd 12 of /x/ring (process 2) is a TCP connection 127.0.0.1:1 -> \
                       127.0.0.1:2 (ESTABLISHED) to a process outside the job (socket:[7]), which \
                       ckpt cannot checkpoint yet: close it before the checkpoint and open it again \
                       after, or ... set CKPT_EXTERNAL_SOCKETS=closed"
            .to_string();
        let told = with_mpi_hint(outside.clone(), Some("pmix_v4"));
        // What the refusal said stays (the task may be another program),
        // followed by what applies to a rank.
        assert!(told.starts_with(&outside), "{told}");
        let rest = &told[outside.len()..];
        assert!(
            rest.contains("If this task is an MPI rank")
                && rest.contains("srun --mpi=pmix")
                && rest.contains("mpirun"),
            "{told}"
        );
        // Other steps, and other refusals, are left as they are.
        assert_eq!(with_mpi_hint(outside.clone(), None), outside);
        assert_eq!(with_mpi_hint(outside.clone(), Some("none")), outside);
        let other = "fd 3 is an io_uring instance".to_string();
        assert_eq!(with_mpi_hint(other.clone(), Some("pmix")), other);
        // A rank of `srun --mpi=pmi2` (MPICH): its PMI socket pair to
        // slurmstepd is not kept, and closing it is no way out.
        let pmi = with_mpi_hint(outside.clone(), Some("pmi2"));
        assert!(pmi.starts_with(&outside), "{pmi}");
        let rest = &pmi[outside.len()..];
        assert!(
            rest.contains("srun --mpi=pmi2")
                && rest.contains("do not set CKPT_EXTERNAL_SOCKETS=closed")
                && rest.contains("mpiexec"),
            "{pmi}"
        );
        assert_eq!(with_mpi_hint(other.clone(), Some("pmi2")), other);
    }
}
