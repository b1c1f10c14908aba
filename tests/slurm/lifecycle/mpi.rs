//! An MPI job (issue 16): an unmodified Open MPI program, compiled here
//! with `mpicc`, started by `mpirun` in a batch script on one node. Its two
//! ranks exchange a token around a ring and join an allreduce at every
//! step over shared memory, with mpirun's PMIx server, its pseudo-terminals
//! and its session directory behind them. On the warning signal the whole
//! job (mpirun and the ranks) is checkpointed, requeued, and resumes on
//! another node; the output is that of an uninterrupted run, each step
//! once. (`docs/mpi.md`; the ranks check every value they receive.)

use super::*;

/// The C/R suite's MPI program and the header it includes.
const RING_C: &str = include_str!("../../programs/mpi/ring.c");
const BIGRING_C: &str = include_str!("../../programs/mpi/bigring.c");
const FENCE_C: &str = include_str!("../../programs/mpi/fence.c");
const LATE_C: &str = include_str!("../../programs/mpi/late.c");
const CRTEST_H: &str = include_str!("../../programs/lib/crtest.h");

/// A directory named `name` with the ring program compiled in it, and what
/// an uninterrupted run of `steps` steps prints as its result; `None`
/// when Open MPI is missing (outside CI).
fn ring_program(c: &Cluster, name: &str, steps: u32) -> Option<(PathBuf, String)> {
    ring_program_with(c, name, steps, Mpi::Open, 2)
}

/// The MPI a ring program is built and run with.
#[derive(Clone, Copy)]
enum Mpi {
    /// Open MPI (`mpicc`, `mpirun`).
    Open,
    /// MPICH (`mpicc.mpich`, Hydra's `mpiexec.mpich`, `UCX_TLS=^sysv`).
    Mpich,
}

/// ... with `ranks` ranks in the uninterrupted run.
fn ring_program_with(
    c: &Cluster,
    name: &str,
    steps: u32,
    mpi: Mpi,
    ranks: u32,
) -> Option<(PathBuf, String)> {
    mpi_program(
        c,
        name,
        ("ring", RING_C),
        &[&steps.to_string(), "0"],
        mpi,
        ranks,
    )
}

/// A directory named `name` with the MPI program `(binary, source)`
/// compiled in it, and the RESULT line of an uninterrupted run of `ranks`
/// ranks with `args`; `None` when the MPI is missing (outside CI).
fn mpi_program(
    c: &Cluster,
    name: &str,
    (binary, source): (&str, &str),
    args: &[&str],
    mpi: Mpi,
    ranks: u32,
) -> Option<(PathBuf, String)> {
    let (cc, packages) = match mpi {
        Mpi::Open => ("mpicc", "openmpi-bin, libopenmpi-dev"),
        Mpi::Mpich => ("mpicc.mpich", "mpich, libmpich-dev"),
    };
    if !ckpt_tests::cr::prerequisite(
        Path::new("/usr/bin").join(cc).exists(),
        &format!("/usr/bin/{cc} ({packages}: scripts/install-deps.sh)"),
    ) {
        return None;
    }
    let dir = setup(c, name);
    fs::create_dir(dir.join("lib")).expect("mkdir lib");
    c.give_to_user(&dir.join("lib"));
    c.write_script(&dir.join("lib/crtest.h"), CRTEST_H);
    let src = format!("{binary}.c");
    c.write_script(&dir.join(&src), source);
    user_ok(c, &dir, &[cc, "-O2", "-I", ".", "-o", binary, &src]);
    let np = ranks.to_string();
    let exe = format!("./{binary}");
    let mut run: Vec<&str> = match mpi {
        Mpi::Open => vec!["mpirun", "--oversubscribe", "-np", &np],
        Mpi::Mpich => vec![
            "env",
            "UCX_TLS=^sysv",
            "mpiexec.mpich",
            "-launcher",
            "fork",
            "-n",
            &np,
        ],
    };
    run.push(&exe);
    run.extend_from_slice(args);
    let want = user_ok(c, &dir, &run);
    let want = result_line(&want).unwrap_or_else(|| panic!("no RESULT: {want}"));
    Some((dir, want))
}

#[test]
fn an_mpi_job_run_by_mpirun_on_one_node_resumes_on_another_node() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 40;
    let Some((dir, want)) = ring_program(&c, "mpi-mpirun", STEPS) else {
        return;
    };
    // `--mca ras ^slurm --mca plm isolated`: start the ranks here. The
    // virtual nodes' names (n1...) are not this machine's host name, so
    // mpirun would take its node for another host and start a daemon there
    // through srun; on a cluster whose node names are host names it starts
    // the ranks of its own node itself anyway (docs/mpi.md).
    ring_moved_and_passed(
        &c,
        &dir,
        &want,
        STEPS,
        &format!("mpirun --mca ras ^slurm --mca plm isolated -np 2 ./ring {STEPS} 400"),
    );
}

/// A batch job running the ring program with `launch` (one node, two
/// ranks) is checkpointed on its warning signal and resumes on another
/// node with the uninterrupted run's output; the ranks passed their checks.
fn ring_moved_and_passed(c: &Cluster, dir: &Path, want: &str, steps: u32, launch: &str) {
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N1 -n2 --checkpoint-dir=ck --signal=B:USR1@10\n\
         {launch}\n"
    );
    let job = moved_to_another_node(c, dir, &script, steps, want);
    let run = job.run();
    c.check(
        run.stdout.lines().any(|l| l == "PASS"),
        "the ranks did not pass their own checks (no PASS line)",
        &run,
    );
}

/// The same with MPICH: Hydra's `mpiexec` in the batch script, its ranks
/// over UCX's POSIX shared memory (`UCX_TLS=^sysv`: its System V shared
/// memory is refused), checkpointed on the warning signal, resumed on
/// another node with the uninterrupted run's output.
#[test]
fn an_mpich_job_run_by_mpiexec_on_one_node_resumes_on_another_node() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 40;
    let Some((dir, want)) = ring_program_with(&c, "mpich-mpiexec", STEPS, Mpi::Mpich, 2) else {
        return;
    };
    // `-launcher fork`: start the ranks here (under Slurm Hydra would start
    // its proxy through srun, a step of its own; docs/mpi.md).
    ring_moved_and_passed(
        &c,
        &dir,
        &want,
        STEPS,
        &format!("export UCX_TLS=^sysv\nmpiexec.mpich -launcher fork -n 2 ./ring {STEPS} 400"),
    );
}

/// mpirun starting its daemon (`orted`) through `srun`, as it does under
/// Slurm on several nodes or when node names are not host names (the
/// virtual nodes here): such a job is not checkpointed yet (docs/mpi.md).
/// The checkpoint on the warning signal is refused with a message, the
/// job is not requeued, and it runs to its end with the uninterrupted
/// run's result: the step's checkpoint signal, which Slurm also delivers
/// to orted and which orted forwards to its ranks, kills nobody.
#[test]
fn an_mpi_job_whose_daemon_srun_starts_is_refused_and_runs_to_its_end() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 30;
    let Some((dir, want)) = ring_program(&c, "mpi-orted", STEPS) else {
        return;
    };
    refused_and_run_to_its_end(
        &c,
        &dir,
        &want,
        "-N1 -n2 --checkpoint-dir=ck --signal=B:USR1@10",
        &format!("mpirun -np 2 ./ring {STEPS} 400"),
    );
}

/// Ranks started by `srun --mpi=pmix` on two nodes, one per node, over
/// Open MPI's TCP transport between the nodes (docs/mpi.md): the warning
/// signal checkpoints the job as one cut (both ranks stopped before either
/// is captured, their connection to each other kept with its bytes), the
/// job is requeued and resumes on another pair of nodes, where the ranks'
/// connection is made again between the new nodes and each rank's PMIx
/// connection goes to ckpt's stand-in for its server, which answers the
/// fence and finalize of `MPI_Finalize`. The output is the uninterrupted
/// run's, each step once, and the ranks passed their own checks. (The
/// virtual nodes share this machine's `/tmp`: each slurmd has its own PMIx
/// directory, `scripts/slurm-cluster.sh`.)
#[test]
fn an_mpi_job_whose_ranks_srun_starts_with_pmix_resumes_on_another_pair_of_nodes() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 40;
    let Some((dir, want)) = ring_program_with(&c, "mpi-pmix", STEPS, Mpi::Open, 4) else {
        return;
    };
    let script = pmix_2x2_script(&format!("./ring {STEPS} 400"));
    let job = submit(&c, &dir, &["-t", "10"], &script);
    wait_step(&c, &job, 4);
    let (first, second, drained) = move_by_warning(&c, &dir, &job, 2);
    let end = final_state(&c, &job);
    drop(drained);
    let run = check_ranks_moved_and_passed(&c, &job, &dir, (&end, &first, &second), STEPS, &want);
    for (ok, what) in [
        (
            run.stdout.lines().filter(|l| *l == "post done").count() == 1,
            "the script's last line is not there once",
        ),
        (
            run.stderr
                .contains("note: OMPI_MCA_btl=^vader is set for this step"),
            "no note that Open MPI's shared-memory transport is left out",
        ),
    ] {
        c.check(ok, what, &run);
    }
}

/// A batch script for 2 nodes x 2 ranks with the warning signal that runs
/// `srun --mpi=pmix` with `command`, then prints `post done`.
fn pmix_2x2_script(command: &str) -> String {
    format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N2 --ntasks-per-node=2 --checkpoint-dir=ck --signal=B:USR1@10\n\
         srun --mpi=pmix {command}\n\
         echo \"post done\"\n"
    )
}

/// A job of 4 ranks moved by [`move_by_warning`] completed on the other
/// nodes (`end`, `first`, `second`) with the uninterrupted run's output,
/// every rank resumed from its image and passed its own checks, and no
/// checkpoint failed. Returns the job's output.
fn check_ranks_moved_and_passed(
    c: &Cluster,
    job: &Job,
    dir: &Path,
    (end, first, second): (&str, &[String], &[String]),
    steps: u32,
    want: &str,
) -> JobRun {
    check_completed_elsewhere(c, job, end, first, second);
    check_continuous(c, job, steps, want);
    let run = job.run();
    for (ok, what) in [
        (
            run.stdout.lines().any(|l| l == "PASS"),
            "the ranks did not pass their own checks (no PASS line)",
        ),
        (
            !run.stderr.contains("checkpoint failed"),
            "a checkpoint failed",
        ),
    ] {
        c.check(ok, what, &run);
    }
    check_ranks_resumed(c, &run, dir, "step0", 4);
    run
}

/// Ranks that exchange 24 MiB messages (2 nodes x 2, `bigring`), the job
/// checkpointed while one of those messages is in flight between nodes:
/// at step 6 rank 2 waits (the `held` file) before it joins the exchange,
/// so rank 1, on the other node, stands inside `MPI_Sendrecv` with the
/// message's first fragment queued on the connection and the rest in its
/// memory. The warning signal comes then; the job resumes on another pair
/// of nodes, rank 2 is let go, the message arrives whole (every word is
/// checked), and the output is the uninterrupted run's.
#[test]
fn an_mpi_job_checkpointed_with_a_message_of_24_mib_in_flight_resumes_on_another_pair_of_nodes() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 12;
    let Some((dir, want)) = mpi_program(
        &c,
        "mpi-pmix-large",
        ("bigring", BIGRING_C),
        &[&STEPS.to_string(), "24"],
        Mpi::Open,
        4,
    ) else {
        return;
    };
    let script = pmix_2x2_script(&format!("./bigring {STEPS} 24 6 held"));
    let held = dir.join("held");
    let job = submit(&c, &dir, &["-t", "10"], &script);
    wait_until(
        &c,
        Some(&job),
        "rank 2 waiting before the exchange of step 6",
        || held.exists(),
    );
    // Rank 1 has sent the first fragment and waits for rank 2's answer.
    std::thread::sleep(Duration::from_millis(500));
    let at = last_step(&fs::read_to_string(&job.out).unwrap_or_default());
    let (first, second, drained) = move_by_warning(&c, &dir, &job, 2);
    c.check(
        at == 5 && held.exists(),
        &format!(
            "the checkpoint was not taken inside the exchange of step 6 (last step printed: {at})"
        ),
        &job.run(),
    );
    fs::remove_file(&held).expect("let rank 2 go");
    let end = final_state(&c, &job);
    drop(drained);
    check_ranks_moved_and_passed(&c, &job, &dir, (&end, &first, &second), STEPS, &want);
}

/// Ranks on different nodes that talk for the first time after the job
/// moved (2 nodes x 2, `late`): the ranks pass values around a ring of
/// neighbours, and from step 6 on each also swaps one with the rank half
/// the ring away (0 with 2, 1 with 3: pairs on different nodes). Before
/// step 6 every rank waits outside MPI while the `held` file exists (made
/// before the job starts), so neither pair has exchanged a byte; the
/// warning signal comes then, the job resumes on another pair of nodes,
/// and the file is removed. Open MPI would connect such a pair at its
/// first message, to the address the peer published at `MPI_Init`, which
/// after a move on a real cluster is the old node's; ckpt has every pair
/// connect in `MPI_Init` instead (`OMPI_MCA_mpi_preconnect_mpi=1`), so the
/// pair's connection is in the images and is made again between the new
/// nodes. Checked: the output is the uninterrupted run's, and no rank made
/// a connection after step 1 (its count of sockets at the end is the one
/// after step 1; without the setting each would have one more, made after
/// the restart: the nodes here share one address, so it would succeed).
#[test]
fn mpi_ranks_that_first_talk_after_the_job_moved_to_other_nodes_use_a_restored_connection() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 12;
    const LATE: u32 = 6;
    let Some((dir, want)) = mpi_program(
        &c,
        "mpi-pmix-late",
        ("late", LATE_C),
        &[&STEPS.to_string(), "100", &LATE.to_string()],
        Mpi::Open,
        4,
    ) else {
        return;
    };
    let script = pmix_2x2_script(&format!("./late {STEPS} 100 {LATE} held"));
    let held = dir.join("held");
    fs::write(&held, "").expect("make the hold file");
    let job = submit(&c, &dir, &["-t", "10"], &script);
    wait_until(&c, Some(&job), "the ranks waiting before step 6", || {
        last_step(&fs::read_to_string(&job.out).unwrap_or_default()) >= LATE - 1
    });
    // The ranks that lag rank 0 by a step reach the hold too.
    std::thread::sleep(Duration::from_millis(500));
    let at = last_step(&fs::read_to_string(&job.out).unwrap_or_default());
    let (first, second, drained) = move_by_warning(&c, &dir, &job, 2);
    c.check(
        at == LATE - 1 && held.exists(),
        &format!("the checkpoint was not taken before step {LATE} (last step printed: {at})"),
        &job.run(),
    );
    fs::remove_file(&held).expect("let the ranks go");
    let end = final_state(&c, &job);
    drop(drained);
    let run = check_ranks_moved_and_passed(&c, &job, &dir, (&end, &first, &second), STEPS, &want);
    // "late: rank R sockets: A after step 1, B at the end"
    let counts: Vec<(u32, u32)> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("late: rank "))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" sockets: ")?;
            let (a, rest) = rest.split_once(" after step 1, ")?;
            let b = rest.strip_suffix(" at the end")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    for (ok, what) in [
        (
            counts.len() == 4,
            format!("not 4 ranks' socket counts: {counts:?}"),
        ),
        (
            counts.iter().all(|(a, b)| a == b),
            format!(
                "a rank made a connection after step 1 (sockets after step 1, at the end): {counts:?}"
            ),
        ),
        (
            run.stderr
                .contains("note: OMPI_MCA_mpi_preconnect_mpi=1 is set for this step"),
            "no note that the ranks connect in MPI_Init".to_string(),
        ),
    ] {
        c.check(ok, &what, &run);
    }
}

/// A rank waiting in a PMIx fence is not checkpointed (2 nodes x 2,
/// `fence`): rank 0 has reached `MPI_Finalize`, where Open MPI waits in a
/// PMIx fence until every rank has joined, while the others wait outside
/// MPI (the `held` file). Its server, slurmstepd, has the fence request;
/// no server would answer it after a restart, so a generation taken now
/// would leave the resumed rank waiting forever. The warning signal comes
/// then: every attempt of the job's checkpoint is refused as passing,
/// naming the rank and the fence, for the 20 s the batch step tries; the
/// job (with no earlier generation) is not requeued. Once the file is
/// removed the ranks finish and the output is the uninterrupted run's.
#[test]
fn an_mpi_rank_waiting_in_a_pmix_fence_is_not_checkpointed_and_the_job_runs_to_its_end() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 6;
    let Some((dir, want)) = mpi_program(
        &c,
        "mpi-pmix-fence",
        ("fence", FENCE_C),
        &[&STEPS.to_string(), "100"],
        Mpi::Open,
        4,
    ) else {
        return;
    };
    let script = pmix_2x2_script(&format!("./fence {STEPS} 100 held"));
    let held = dir.join("held");
    let job = submit(&c, &dir, &["-t", "10"], &script);
    // Rank 0 prints PASS after the barrier, just before MPI_Finalize.
    wait_until(&c, Some(&job), "rank 0 reaching MPI_Finalize", || {
        held.exists()
            && fs::read_to_string(&job.out)
                .unwrap_or_default()
                .lines()
                .any(|l| l == "PASS")
    });
    std::thread::sleep(Duration::from_secs(1));
    user_ok(
        &c,
        &dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    wait_until(&c, Some(&job), "the job's checkpoint to give up", || {
        fs::read_to_string(&job.err)
            .unwrap_or_default()
            .contains("the job's checkpoint gave up after")
    });
    fs::remove_file(&held).expect("let the ranks finish");
    let end = final_state(&c, &job);
    let run = job.run();
    check_continuous(&c, &job, STEPS, &want);
    for (ok, what) in [
        (end == "COMPLETED", format!("final state {end}")),
        (
            run.stderr.contains("is waiting in a PMIx fence"),
            "the refusal does not name the fence".to_string(),
        ),
        (
            run.stderr.contains("the job is NOT requeued")
                && !run.stderr.contains("SLURM_RESTART_COUNT=1"),
            "the job was requeued, or did not say it was not".to_string(),
        ),
        (
            run.stdout.lines().any(|l| l == "PASS")
                && run.stdout.lines().filter(|l| *l == "post done").count() == 1,
            "the ranks did not pass their checks, or the script did not reach its end once"
                .to_string(),
        ),
    ] {
        c.check(ok, &what, &run);
    }
}

/// The same ranks (2 nodes x 2) checkpointed every 10 s, then the batch
/// node fails (drained and set down: Slurm kills the job there and
/// requeues it): the job resumes from its newest periodic checkpoint on the
/// other nodes, the ranks' connections and PMIx stand-in as above, and the
/// output is the uninterrupted run's, each step once (what was printed
/// after the checkpoint is cut off and printed again by the resumed run).
#[test]
fn an_mpi_job_of_srun_pmix_checkpointed_periodically_resumes_after_a_node_failure() {
    let Some(c) = slurm::cluster() else { return };
    const STEPS: u32 = 60;
    let Some((dir, want)) = ring_program_with(&c, "mpi-pmix-periodic", STEPS, Mpi::Open, 4) else {
        return;
    };
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N2 --ntasks-per-node=2 --requeue\n\
         #SBATCH --checkpoint-dir=ck --checkpoint-interval=10 --signal=B:USR1@10\n\
         srun --mpi=pmix ./ring {STEPS} 400\n\
         echo \"post done\"\n"
    );
    let job = submit(&c, &dir, &["-t", "10"], &script);
    let batch_latest = dir.join("ck/batch/latest/generation.json");
    wait_until(
        &c,
        Some(&job),
        "a periodic checkpoint of the whole job",
        || fs::read_to_string(&batch_latest).is_ok_and(|g| g.contains("\"relaunch\"")),
    );
    let step = || last_step(&fs::read_to_string(&job.out).unwrap_or_default());
    let at = step();
    wait_until(&c, Some(&job), "progress after the checkpoint", || {
        step() >= at + 2
    });
    let (first, down) = fail_first_node(&c, &job);
    wait_resumed(&c, &job, 1);
    let second = job_nodes(&c, job.id);
    let end = final_state(&c, &job);
    drop(down);
    check_completed_elsewhere(&c, &job, &end, &first, &second);
    check_continuous(&c, &job, STEPS, &want);
    let run = job.run();
    c.check(
        run.stdout.lines().any(|l| l == "PASS")
            && run.stdout.lines().filter(|l| *l == "post done").count() == 1,
        "the ranks did not pass their own checks, or the script's last line is not there once",
        &run,
    );
}

/// A batch job in partition `multi` (`#SBATCH` `options`, then the MPI
/// `launch` line) whose checkpoint on the warning signal is
/// refused: it is not requeued and runs to its end with the uninterrupted
/// run's result, the ranks' own checks passed and the script's last line
/// printed. Returns the run for the caller's checks of the message.
fn refused_and_run_to_its_end(
    c: &Cluster,
    dir: &Path,
    want: &str,
    options: &str,
    launch: &str,
) -> JobRun {
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi {options}\n\
         {launch}\n\
         echo \"post done\"\n"
    );
    let job = submit(c, dir, &["-t", "10"], &script);
    wait_step(c, &job, 3);
    user_ok(
        c,
        dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    let end = final_state(c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    c.check(
        run.stderr.contains("the job is NOT requeued"),
        "no message that the checkpoint was refused and the job not requeued",
        &run,
    );
    c.check(
        !run.stderr.contains("SLURM_RESTART_COUNT=1"),
        "the job was requeued",
        &run,
    );
    c.check(
        result_line(&run.stdout).as_deref() == Some(want),
        &format!("result differs from the uninterrupted run's {want:?}"),
        &run,
    );
    c.check(
        run.stdout.lines().any(|l| l == "PASS") && run.stdout.lines().any(|l| l == "post done"),
        "the ranks did not pass their own checks, or the script did not reach its end",
        &run,
    );
    run
}
