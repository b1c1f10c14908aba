//! Whole batch jobs whose script runs `srun` (issue 15): one checkpoint of
//! the script's process tree and of every task of its running step, on the
//! warning signal, at preemption and periodically; after the requeue the
//! script resumes, the running `srun` is started again in its place and
//! its tasks resume from their images; finished steps are not run again;
//! the output is that of an uninterrupted run, each line once.

use super::*;

/// The script of the README's walk-through: a short step, a long step that
/// gets interrupted, a step started after the resume, a post-processing
/// line.
fn three_part_script(header: &str, steps: u32) -> String {
    format!(
        "#!/bin/bash\n{header}\n\
         srun -Q python3 -c 'print(\"prepared\", flush=True)'\n\
         srun -Q python3 pi.py {steps} 0.5\n\
         srun -Q python3 -c 'print(\"finished\", flush=True)'\n\
         echo \"post done\"\n"
    )
}

/// Each of `lines` appears exactly once in the job's output.
fn once_each(c: &Cluster, job: &Job, lines: &[&str]) {
    let run = job.run();
    for want in lines {
        let n = run.stdout.lines().filter(|l| l == want).count();
        c.check(
            n == 1,
            &format!("{want:?} appears {n} times in the output, not once"),
            &run,
        );
    }
}

/// No image is left in the job's directory after it succeeded.
fn no_images_left(c: &Cluster, job: &Job) {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("gen-") {
                out.push(e.path());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut left = Vec::new();
    walk(&job.dir.join("ck"), &mut left);
    c.check(
        left.is_empty(),
        &format!("images left after success: {left:?}"),
        &job.run(),
    );
}

#[test]
fn a_batch_script_running_srun_resumes_whole_after_a_warning_signal_and_a_preemption() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun");
    const STEPS: u32 = 30;
    let want = reference(&c, &dir, &["python3", "pi.py", &STEPS.to_string(), "0"], 0);
    let script = three_part_script("#SBATCH --checkpoint-dir=ck --signal=B:USR1@10", STEPS);
    let job = submit(&c, &dir, &["-t", "10"], &script);

    signal_then_preempt(&c, &dir, &job);

    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_continuous(&c, &job, STEPS, &want);
    once_each(&c, &job, &["prepared", "finished", "post done"]);
    let resumed = format!(
        "resuming from {}/gen-",
        dir.join("ck/step1/task0").display()
    );
    c.check(
        run.stderr.matches(&resumed).count() == 2,
        &format!("the step's task did not resume twice from its images ({resumed:?})"),
        &run,
    );
    c.check(
        !run.stderr.contains("from the beginning"),
        "a step was started again from its beginning",
        &run,
    );
    no_images_left(&c, &job);
}

#[test]
fn a_periodically_checkpointed_batch_script_with_srun_resumes_after_a_requeue_without_warning() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun-periodic");
    const STEPS: u32 = 40;
    let want = reference(&c, &dir, &["python3", "pi.py", &STEPS.to_string(), "0"], 0);
    let script = three_part_script(
        "#SBATCH --checkpoint-dir=ck --checkpoint-interval=10 --signal=B:USR1@10",
        STEPS,
    );
    let job = submit(&c, &dir, &["-t", "10"], &script);
    let batch_latest = dir.join("ck/batch/latest");
    wait_until(&c, Some(&job), "a periodic checkpoint of the job", || {
        fs::read_to_string(batch_latest.join("generation.json"))
            .is_ok_and(|g| g.contains("\"relaunch\""))
    });
    // Progress after it, then a requeue with no warning (a node failure,
    // an administrator): the job resumes from the periodic checkpoint,
    // and what was written since is written again exactly once.
    let at = last_step(&fs::read_to_string(&job.out).unwrap_or_default());
    wait_step(&c, &job, at + 3);
    user_ok(&c, &dir, &["scontrol", "requeue", &job.id.to_string()]);
    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_continuous(&c, &job, STEPS, &want);
    once_each(&c, &job, &["prepared", "finished", "post done"]);
    c.check(
        run.stderr.contains(&format!(
            "resuming from {}/gen-",
            dir.join("ck/step1/task0").display()
        )),
        "the step's task did not resume from the job's periodic checkpoint",
        &run,
    );
    no_images_left(&c, &job);
}

#[test]
fn a_step_that_cannot_be_checkpointed_leaves_the_batch_job_running_to_its_end() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun-refused");
    // A connection to a server outside the job (slurmctld's port) that the
    // program keeps open: its task cannot be checkpointed.
    c.write_script(
        &dir.join("held.py"),
        "import socket, time\n\
         s = socket.create_connection((\"127.0.0.1\", 6817))\n\
         for i in range(1, 21):\n\
         \x20   print(f\"step {i} inside 0\", flush=True)\n\
         \x20   time.sleep(0.5)\n\
         print(\"RESULT held\", flush=True)\n",
    );
    let script = "#!/bin/bash\n#SBATCH --checkpoint-dir=ck --signal=B:USR1@10\n\
                  srun -Q python3 held.py\necho \"post done\"\n";
    let job = submit(&c, &dir, &["-t", "10"], script);
    wait_step(&c, &job, 3);
    user_ok(
        &c,
        &dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_continuous(&c, &job, 20, "RESULT held");
    once_each(&c, &job, &["post done"]);
    for needle in ["task 0 of step", "socket", "the job is NOT requeued"] {
        c.check(
            run.stderr.contains(needle),
            &format!("job stderr lacks {needle:?}"),
            &run,
        );
    }
    // The same, as errors, in the log of the node that ran the batch step
    // (slurmstepd relays ckpt's lines: spank-plugin's log_relay).
    let logs: String = fs::read_dir(c.prefix.join("log"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("slurmd"))
                .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let prefix = format!("ckpt: job {} batch step: task 0: ", job.id);
    for needle in ["checkpoint failed: ", "the job is NOT requeued"] {
        c.check(
            logs.lines().any(|l| {
                l.contains("error:")
                    && l.contains(&prefix)
                    && l.contains(needle)
                    && (needle != "checkpoint failed: " || l.contains("socket"))
            }),
            &format!("no slurmd log has an error line {prefix}{needle}..."),
            &run,
        );
    }
    c.check(
        !run.stderr.contains("SLURM_RESTART_COUNT=1"),
        "the job was requeued",
        &run,
    );
}

#[test]
fn a_two_node_batch_job_running_srun_resumes_on_another_pair_of_nodes() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun-nodes");
    const STEPS: u32 = 30;
    const RANKS: u32 = 4;
    let wants: Vec<String> = (0..RANKS)
        .map(|r| reference(&c, &dir, &["python3", "pi.py", &STEPS.to_string(), "0"], r))
        .collect();
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N2 --ntasks-per-node=2 --checkpoint-dir=ck --signal=B:USR1@10\n\
         srun -Q -N1 -n1 python3 -c 'print(\"prepared\", flush=True)'\n\
         srun -Q -l python3 pi.py {STEPS} 0.5\n\
         echo \"post done\"\n"
    );
    let job = submit(&c, &dir, &["-t", "10"], &script);
    let rank_step = |rank: u32| {
        last_step(&rank_lines(&fs::read_to_string(&job.out).unwrap_or_default(), rank).join("\n"))
    };
    wait_until(&c, Some(&job), "step 4 of every rank", || {
        (0..RANKS).all(|r| rank_step(r) >= 4)
    });
    // The node the batch script runs on goes out of service: the job must
    // come back elsewhere.
    let (first, second, drained) = move_by_warning(&c, &dir, &job, 2);
    // What the job's checkpoint holds: the step, its four tasks, where
    // they ran.
    let ck = dir.join("ck").display().to_string();
    let bin = c.install.ckpt_bin.display().to_string();
    let status = user_ok(&c, &dir, &[&bin, "status", "--dir", &ck]);
    for needle in [
        "a batch job's directory".to_string(),
        format!(
            "{}.1 `srun -Q -l python3 pi.py {STEPS} 0.5`: 4 task(s) in step1",
            job.id
        ),
        "task 3: gen-000001 (".to_string(),
        format!(" on {}", first[1]),
    ] {
        c.check(
            status.contains(&needle),
            &format!("`ckpt status --dir {ck}` lacks {needle:?}:\n{status}"),
            &job.run(),
        );
    }
    let end = final_state(&c, &job);
    drop(drained);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_moved_and_continuous(&c, &run, &first, &second, &wants, STEPS);
    check_ranks_resumed(&c, &run, &dir, "step1", RANKS);
    once_each(&c, &job, &["prepared", "post done"]);
    no_images_left(&c, &job);
}

#[test]
fn concurrent_steps_and_a_multi_prog_step_resume_together() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun-concurrent");
    // Rank 0 and rank 1 of the --multi-prog step run different step counts.
    c.write_script(
        &dir.join("mp.conf"),
        "0 python3 pi.py 30 0.5\n1 python3 pi.py 24 0.5\n",
    );
    let want_a = reference(&c, &dir, &["python3", "pi.py", "30", "0"], 0);
    let want_b0 = reference(&c, &dir, &["python3", "pi.py", "30", "0"], 0);
    let want_b1 = reference(&c, &dir, &["python3", "pi.py", "24", "0"], 1);
    // Two steps at once, each writing to a file of its own through srun.
    let script = "#!/bin/bash\n\
                  #SBATCH -p multi -N2 -n4 --checkpoint-dir=ck --signal=B:USR1@10\n\
                  srun -Q -l -N1 -n1 python3 pi.py 30 0.5 > a.out &\n\
                  srun -Q -l -N1 -n2 --multi-prog mp.conf > b.out &\n\
                  wait\n\
                  echo \"post done\"\n";
    let job = submit(&c, &dir, &["-t", "10"], script);
    let progress = |file: &str, rank: u32| {
        rank_progress(
            &fs::read_to_string(dir.join(file)).unwrap_or_default(),
            rank,
        )
        .0
        .last()
        .copied()
        .unwrap_or(0)
    };
    wait_until(&c, Some(&job), "step 4 of both steps", || {
        progress("a.out", 0) >= 4 && progress("b.out", 0) >= 4 && progress("b.out", 1) >= 4
    });
    user_ok(
        &c,
        &dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    wait_resumed(&c, &job, 1);
    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    for (file, rank, steps, want) in [
        ("a.out", 0, 30, &want_a),
        ("b.out", 0, 30, &want_b0),
        ("b.out", 1, 24, &want_b1),
    ] {
        let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
        let (got, result) = rank_progress(&text, rank);
        c.check(
            got == (1..=steps).collect::<Vec<u32>>(),
            &format!("{file} rank {rank}: not steps 1..={steps} once each: {got:?}\n{text}"),
            &run,
        );
        c.check(
            result.as_deref() == Some(want.as_str()),
            &format!("{file} rank {rank}: result {result:?}, uninterrupted run gives {want:?}"),
            &run,
        );
    }
    once_each(&c, &job, &["post done"]);
    c.check(
        run.stderr.matches("resuming from ").count() == 4,
        "not every task and the batch step resumed from an image",
        &run,
    );
    no_images_left(&c, &job);
}

#[test]
fn every_task_of_a_job_array_running_srun_checkpoints_and_resumes_on_its_own() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun-array");
    const STEPS: u32 = 20;
    let want = reference(&c, &dir, &["python3", "pi.py", &STEPS.to_string(), "0"], 0);
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi --array=0-2 --checkpoint-dir=ck/%A_%a --signal=B:USR1@10\n\
         srun -Q python3 pi.py {STEPS} 0.5\n"
    );
    c.write_script(&dir.join("job.sh"), &script);
    let out = user_ok(
        &c,
        &dir,
        &[
            "sbatch",
            "--parsable",
            "-t",
            "10",
            "--output=arr_%a.out",
            "--error=arr_%a.err",
            "job.sh",
        ],
    );
    let array: u32 = out
        .trim()
        .split(';')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("sbatch printed no job id: {out}"));
    let read = |what: &str, i: u32| {
        fs::read_to_string(dir.join(format!("arr_{i}.{what}"))).unwrap_or_default()
    };
    let all = |what: &str| -> JobRun {
        JobRun {
            command: format!("array job {array}"),
            id: Some(array),
            success: true,
            code: None,
            submit_stdout: String::new(),
            submit_stderr: String::new(),
            stdout: (0..3)
                .map(|i| read("out", i))
                .collect::<Vec<_>>()
                .join("\n"),
            stderr: format!(
                "{what}\n{}",
                (0..3)
                    .map(|i| read("err", i))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    };
    let deadline = Instant::now() + WAIT;
    while !(0..3).all(|i| last_step(&read("out", i)) >= 4) {
        if Instant::now() > deadline {
            c.fail(
                "timed out waiting: step 4 in every array task",
                Some(&all("")),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One signal to the array: every task's batch step.
    user_ok(
        &c,
        &dir,
        &["scancel", "--signal=USR1", "--batch", &array.to_string()],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let resumed = (0..3).all(|i| read("err", i).contains("SLURM_RESTART_COUNT=1)"));
        let queued = root_cmd(&c, "squeue")
            .args(["-h", "-o", "%i", "-j", &array.to_string()])
            .output()
            .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
            .unwrap_or(true);
        if resumed && !queued {
            break;
        }
        if Instant::now() > deadline {
            c.fail(
                "timed out waiting: every array task resumed and ended",
                Some(&all("")),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = all("");
    for i in 0..3 {
        let text = read("out", i);
        let steps: Vec<u32> = text
            .lines()
            .filter_map(|l| l.strip_prefix("step "))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect();
        c.check(
            steps == (1..=STEPS).collect::<Vec<_>>(),
            &format!("array task {i}: not steps 1..={STEPS} once each: {steps:?}"),
            &run,
        );
        c.check(
            result_line(&text).as_deref() == Some(want.as_str()),
            &format!("array task {i}: result differs from {want:?}"),
            &run,
        );
        let own = format!(
            "resuming from {}",
            dir.join(format!("ck/{array}_{i}/step0/task0")).display()
        );
        c.check(
            read("err", i).contains(&own),
            &format!("array task {i} did not resume from its own images ({own:?})"),
            &run,
        );
        // Each task requeues itself alone: the job id of one task is the
        // array's, which names every task to `scontrol requeue`.
        c.check(
            read("err", i).contains(&format!("job {array}_{i} requeued")),
            &format!("array task {i} did not requeue itself as {array}_{i}"),
            &run,
        );
    }
}

#[test]
fn a_node_failure_requeues_a_periodically_checkpointed_two_node_job_which_resumes_on_the_others() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-srun-node-failure");
    const STEPS: u32 = 40;
    const RANKS: u32 = 4;
    let wants: Vec<String> = (0..RANKS)
        .map(|r| reference(&c, &dir, &["python3", "pi.py", &STEPS.to_string(), "0"], r))
        .collect();
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N2 --ntasks-per-node=2 --requeue\n\
         #SBATCH --checkpoint-dir=ck --checkpoint-interval=10 --signal=B:USR1@10\n\
         srun -Q -l python3 pi.py {STEPS} 0.5\n\
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
    let rank_step = |rank: u32| {
        rank_progress(&fs::read_to_string(&job.out).unwrap_or_default(), rank)
            .0
            .last()
            .copied()
            .unwrap_or(0)
    };
    let at = rank_step(0);
    wait_until(&c, Some(&job), "progress after the checkpoint", || {
        (0..RANKS).all(|r| rank_step(r) >= at + 2)
    });
    // The batch node fails: Slurm kills what ran there and, the job being
    // requeueable, requeues it; it cannot come back to that node.
    let (first, down) = fail_first_node(&c, &job);
    wait_resumed(&c, &job, 1);
    let second = job_nodes(&c, job.id);
    let end = final_state(&c, &job);
    drop(down);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_moved_and_continuous(&c, &run, &first, &second, &wants, STEPS);
    once_each(&c, &job, &["post done"]);
    no_images_left(&c, &job);
}
