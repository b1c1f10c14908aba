//! The Slurm lifecycle end to end (issue 6): a checkpointed job is
//! checkpointed on its warning signal or at preemption, requeued, resumed
//! from its images, and finishes with the result of an uninterrupted run,
//! with its output file continuous; srun steps checkpoint periodically and a
//! rerun resumes them task by task; a corrupt image fails clearly.
//!
//! Every wait has a deadline; nothing asserts on time. The programs are
//! seeded Monte-Carlo estimates of pi that print one line per step; the
//! reference result comes from running the same program directly.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_tests::slurm::{self, Cluster, JobRun};

mod batch_steps;
mod mpi;
mod sockets;

/// Python: `pi.py STEPS DELAY`; the seed depends on `SLURM_PROCID`.
const PI_PY: &str = r#"import os, random, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
rank = int(os.environ.get("SLURM_PROCID", "0"))
rng = random.Random(20261126 + rank)
inside = total = 0
for step in range(1, steps + 1):
    for _ in range(20000):
        x = rng.random(); y = rng.random()
        inside += (x * x + y * y <= 1.0); total += 1
    print(f"step {step} inside {inside}", flush=True)
    time.sleep(delay)
print(f"RESULT rank {rank} pi={4 * inside / total:.12f}", flush=True)
"#;

/// R: `Rscript pi.R STEPS DELAY`.
const PI_R: &str = r#"args <- commandArgs(trailingOnly = TRUE)
steps <- as.integer(args[1]); delay <- as.numeric(args[2])
set.seed(20261126)
inside <- 0; total <- 0
for (k in seq_len(steps)) {
  x <- runif(20000); y <- runif(20000)
  inside <- inside + sum(x * x + y * y <= 1); total <- total + 20000
  cat(sprintf("step %d inside %d\n", k, as.integer(inside))); flush(stdout())
  Sys.sleep(delay)
}
cat(sprintf("RESULT rank 0 pi=%.12f\n", 4 * inside / total))
"#;

/// Deadline of one wait for a job event.
const WAIT: Duration = Duration::from_secs(180);

fn root_cmd(c: &Cluster, prog: &str) -> Command {
    c.tool(prog)
}

/// Runs a command as the test user, returning its stdout; panics with its
/// stderr when it fails.
fn user_ok(c: &Cluster, dir: &Path, argv: &[&str]) -> String {
    let run = c.run_as_user(dir, argv);
    if !run.success {
        c.fail(&format!("`{}` failed", argv.join(" ")), Some(&run));
    }
    run.submit_stdout
}

/// A fresh test directory with both programs.
fn setup(c: &Cluster, name: &str) -> PathBuf {
    let dir = c.workdir(name);
    c.write_script(&dir.join("pi.py"), PI_PY);
    c.write_script(&dir.join("pi.R"), PI_R);
    dir
}

/// What the program prints when nothing interrupts it.
fn reference(c: &Cluster, dir: &Path, argv: &[&str], rank: u32) -> String {
    let rank_env = format!("SLURM_PROCID={rank}");
    let mut full = vec!["env", rank_env.as_str()];
    full.extend_from_slice(argv);
    let out = user_ok(c, dir, &full);
    result_line(&out).unwrap_or_else(|| panic!("no RESULT from {argv:?}: {out}"))
}

fn result_line(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split_once(": ").map_or(l, |(_, r)| r))
        .find(|l| l.starts_with("RESULT"))
        .map(str::to_owned)
}

/// A submitted batch job.
struct Job {
    id: u32,
    out: PathBuf,
    err: PathBuf,
    dir: PathBuf,
}

impl Job {
    fn run(&self) -> JobRun {
        JobRun {
            command: format!("batch job {}", self.id),
            id: Some(self.id),
            success: true,
            code: None,
            submit_stdout: String::new(),
            submit_stderr: String::new(),
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

fn submit(c: &Cluster, dir: &Path, args: &[&str], script: &str) -> Job {
    let path = dir.join("job.sh");
    c.write_script(&path, script);
    let out = dir.join("job.out");
    let err = dir.join("job.err");
    let out_arg = format!("--output={}", out.display());
    let err_arg = format!("--error={}", err.display());
    let mut argv = vec!["sbatch", "--parsable", out_arg.as_str(), err_arg.as_str()];
    argv.extend_from_slice(args);
    argv.push("job.sh");
    let stdout = user_ok(c, dir, &argv);
    let id = stdout
        .lines()
        .next()
        .and_then(|l| l.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("sbatch printed no job id: {stdout}"));
    Job {
        id,
        out,
        err,
        dir: dir.to_path_buf(),
    }
}

/// Waits until `cond` holds, failing with `what` and the job's files.
fn wait_until(c: &Cluster, job: Option<&Job>, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = job.map(Job::run);
    c.fail(&format!("timed out waiting: {what}"), run.as_ref());
}

/// The job's state in squeue, `None` once it is gone.
fn state(c: &Cluster, id: u32) -> Option<String> {
    let out = root_cmd(c, "squeue")
        .args(["-h", "-o", "%T", "-j", &id.to_string()])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Waits for the job to leave the queue and returns its final state from
/// the jobcomp file (the last record of that id: ids restart with the
/// cluster).
fn final_state(c: &Cluster, job: &Job) -> String {
    wait_until(c, Some(job), "the job to end", || {
        state(c, job.id).is_none()
    });
    let comp = c.prefix.join("log/jobcomp.txt");
    let text = fs::read_to_string(&comp).unwrap_or_default();
    let key = format!("JobId={} ", job.id);
    text.lines()
        .rev()
        .find(|l| l.starts_with(&key))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("JobState="))
        })
        .unwrap_or("<no jobcomp record>")
        .to_owned()
}

/// The highest "step N" line in `text`.
fn last_step(text: &str) -> u32 {
    text.lines()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits until the job's output shows step `n` or later.
fn wait_step(c: &Cluster, job: &Job, n: u32) {
    wait_until(
        c,
        Some(job),
        &format!("step {n} in the job's output"),
        || last_step(&fs::read_to_string(&job.out).unwrap_or_default()) >= n,
    );
}

/// Waits until the job runs again after its `count`th requeue.
fn wait_resumed(c: &Cluster, job: &Job, count: u32) {
    let line = format!("SLURM_RESTART_COUNT={count})");
    wait_until(
        c,
        Some(job),
        &format!("the job to resume after requeue {count}"),
        || {
            fs::read_to_string(&job.err)
                .unwrap_or_default()
                .contains(&line)
        },
    );
}

/// The output is exactly steps 1..=steps, once each and in order, then the
/// result of an uninterrupted run.
fn check_continuous(c: &Cluster, job: &Job, steps: u32, want: &str) {
    let run = job.run();
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("step ") || l.starts_with("RESULT"))
        .collect();
    let numbers: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    let expected: Vec<u32> = (1..=steps).collect();
    c.check(
        numbers == expected,
        &format!("the output is not steps 1..={steps} once each, in order: {numbers:?}"),
        &run,
    );
    c.check(
        result_line(&run.stdout).as_deref() == Some(want),
        &format!("result differs from the uninterrupted run's {want:?}"),
        &run,
    );
    c.check(
        !run.stdout.contains('\0'),
        "the output file has a hole (NUL bytes)",
        &run,
    );
}

/// Preempts the job by a whole-node job in the `high` partition.
fn preempt(c: &Cluster, dir: &Path) {
    user_ok(
        c,
        dir,
        &[
            "sbatch",
            "-p",
            "high",
            "--exclusive",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 1",
        ],
    );
}

/// At step 4 the warning signal (the job resumes), four steps after the
/// resume a preemption (it resumes again).
fn signal_then_preempt(c: &Cluster, dir: &Path, job: &Job) {
    wait_step(c, job, 4);
    user_ok(
        c,
        dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    wait_resumed(c, job, 1);
    let resumed_at = last_step(&fs::read_to_string(&job.out).unwrap_or_default());
    wait_step(c, job, resumed_at + 4);
    preempt(c, dir);
    wait_resumed(c, job, 2);
}

/// The seed workflow for one program: signal, then preemption.
fn seed_workflow(name: &str, program: &[&str], open_mode: Option<&str>) {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, name);
    const STEPS: u32 = 30;
    let steps = STEPS.to_string();
    let mut argv: Vec<&str> = program.to_vec();
    argv.extend_from_slice(&[&steps, "0.5"]);
    let want = reference(
        &c,
        &dir,
        &{
            let mut quick = program.to_vec();
            quick.extend_from_slice(&[&steps, "0"]);
            quick
        },
        0,
    );
    // The two-line job script of the README.
    let script = format!(
        "#!/bin/bash\n#SBATCH --checkpoint-dir=ck --signal=B:USR1@10\n{}\n",
        argv.join(" ")
    );
    let mut args = vec!["-t", "10"];
    if let Some(mode) = open_mode {
        args.push(mode);
    }
    let job = submit(&c, &dir, &args, &script);

    signal_then_preempt(&c, &dir, &job);

    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_continuous(&c, &job, STEPS, &want);
    for needle in [
        "ckpt: SIGUSR1 received: checkpointing",
        "SLURM_RESTART_COUNT=1)",
        "SLURM_RESTART_COUNT=2)",
    ] {
        c.check(
            run.stderr.contains(needle),
            &format!("job stderr lacks {needle:?}"),
            &run,
        );
    }
    let images = job.dir.join("ck/batch");
    let left: Vec<_> = fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    c.check(
        !left.iter().any(|n| n.to_string_lossy().starts_with("gen-")),
        &format!("images left after success: {left:?}"),
        &run,
    );
}

#[test]
fn seed_r_job_survives_a_warning_signal_and_a_preemption() {
    seed_workflow("seed-r", &["Rscript", "pi.R"], None);
}

#[test]
fn seed_python_job_survives_a_warning_signal_and_a_preemption_in_append_mode() {
    seed_workflow("seed-py", &["python3", "pi.py"], Some("--open-mode=append"));
}

#[test]
fn a_job_longer_than_its_time_limit_finishes_after_requeues() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "timelimit");
    // About 75 s of work under --time=1.
    const STEPS: u32 = 75;
    let want = reference(&c, &dir, &["python3", "pi.py", "75", "0"], 0);
    let script = "#!/bin/bash\n#SBATCH --checkpoint-dir=ck\npython3 pi.py 75 1\n";
    let job = submit(&c, &dir, &["--time=1", "--signal=B:USR1@30"], script);
    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    c.check(
        run.stderr.contains("SLURM_RESTART_COUNT=1)"),
        "the job was never requeued",
        &run,
    );
    check_continuous(&c, &job, STEPS, &want);
}

/// srun with `-l` output: the lines of one rank, without the label.
fn rank_lines(text: &str, rank: u32) -> Vec<String> {
    let label = format!("{rank}: ");
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(&label))
        .map(str::to_owned)
        .collect()
}

#[test]
fn periodic_srun_checkpoints_resume_task_by_task_after_scancel_in_a_salloc_rerun() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "srun-periodic");
    let ck = dir.join("ck");
    let ck_arg = format!("--checkpoint-dir={}", ck.display());
    let wants = [
        reference(&c, &dir, &["python3", "pi.py", "60", "0"], 0),
        reference(&c, &dir, &["python3", "pi.py", "60", "0"], 1),
    ];
    let srun = [
        "srun",
        "-Q",
        "-l",
        "-J",
        "ckpt-periodic",
        "-n",
        "2",
        ck_arg.as_str(),
        "--checkpoint-interval=10",
        "python3",
        "pi.py",
        "60",
        "0.5",
    ];
    let mut first = c
        .user_command(&dir, &c.conf, &srun)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start srun: {e}"));
    let latest = |rank: u32| ck.join(format!("step0/task{rank}/latest"));
    let started = Instant::now();
    while !(latest(0).exists() && latest(1).exists()) {
        if started.elapsed() > WAIT {
            let _ = first.kill();
            c.fail("no periodic checkpoint of both tasks", None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    user_ok(&c, &dir, &["scancel", "--name=ckpt-periodic"]);
    let first = first
        .wait_with_output()
        .unwrap_or_else(|e| panic!("srun: {e}"));
    let first_out = String::from_utf8_lossy(&first.stdout).into_owned();
    let run1 = JobRun {
        command: srun.join(" "),
        id: None,
        success: first.status.success(),
        code: first.status.code(),
        submit_stdout: first_out.clone(),
        submit_stderr: String::from_utf8_lossy(&first.stderr).into_owned(),
        stdout: String::new(),
        stderr: String::new(),
    };
    c.check(
        result_line(&first_out).is_none(),
        "the first run finished before scancel: nothing to resume",
        &run1,
    );

    // The same command again, this time as the first step of a salloc
    // allocation (step 0 again, so the same task directories).
    let mut in_salloc = vec!["salloc", "-Q", "-n", "2"];
    in_salloc.extend_from_slice(&srun);
    let rerun = c.run_as_user(&dir, &in_salloc);
    c.check(rerun.success, "the rerun failed", &rerun);
    for (rank, want) in wants.iter().enumerate() {
        let rank = u32::try_from(rank).unwrap_or(0);
        let lines = rank_lines(&rerun.submit_stdout, rank);
        let steps: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("step "))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect();
        c.check(
            steps.first().is_some_and(|s| *s > 1),
            &format!("task {rank} started again from step 1 instead of resuming: {steps:?}"),
            &rerun,
        );
        c.check(
            steps.windows(2).all(|w| w[1] == w[0] + 1) && steps.last() == Some(&60),
            &format!("task {rank}: steps not consecutive up to 60: {steps:?}"),
            &rerun,
        );
        let result = lines.iter().find(|l| l.starts_with("RESULT"));
        c.check(
            result.map(String::as_str) == Some(want.as_str()),
            &format!("task {rank}: result {result:?}, uninterrupted run gives {want:?}"),
            &rerun,
        );
        let resumed = format!(
            "resuming from {}",
            ck.join(format!("step0/task{rank}")).display()
        );
        c.check(
            rerun.submit_stderr.contains(&resumed),
            &format!("no {resumed:?} in srun's stderr"),
            &rerun,
        );
    }
}

#[test]
fn periodic_batch_checkpoints_resume_after_a_requeue_without_warning() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-periodic");
    const STEPS: u32 = 60;
    let want = reference(&c, &dir, &["python3", "pi.py", "60", "0"], 0);
    let script = "#!/bin/bash\n#SBATCH --checkpoint-dir=ck --checkpoint-interval=10\n\
                  python3 pi.py 60 0.5\n";
    let job = submit(&c, &dir, &["-t", "10"], script);
    let second = dir.join("ck/batch/gen-000002/generation.json");
    wait_until(
        &c,
        Some(&job),
        "a second periodic checkpoint of the batch step",
        || second.exists(),
    );
    // Periodic checkpoints track written pages: the second one refers to
    // the first for the memory that did not change.
    let record: serde_json::Value = fs::read(&second)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    c.check(
        record["base"].as_u64() == Some(1),
        &format!("the second periodic checkpoint is not incremental: {record}"),
        &job.run(),
    );
    // Progress after the checkpoint, then a requeue with no warning signal
    // (an administrator, or a node failure): the output written since the
    // checkpoint is written again by the resumed program, exactly once.
    let at = last_step(&fs::read_to_string(&job.out).unwrap_or_default());
    wait_step(&c, &job, at + 3);
    user_ok(&c, &dir, &["scontrol", "requeue", &job.id.to_string()]);
    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    check_continuous(&c, &job, STEPS, &want);
    c.check(
        run.stderr.contains("SLURM_RESTART_COUNT=1)"),
        "the batch step did not resume from its periodic checkpoint",
        &run,
    );
}

#[test]
fn a_step_inside_a_requeued_batch_job_resumes_from_its_periodic_image() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "batch-step");
    let want = reference(&c, &dir, &["python3", "pi.py", "50", "0"], 0);
    // The batch script runs srun, whose client holds sockets to slurmctld:
    // the batch step itself cannot be checkpointed, its step can.
    let script = "#!/bin/bash\n#SBATCH --checkpoint-dir=ck\n\
                  srun -Q --checkpoint-interval=10 python3 pi.py 50 0.5\n";
    let job = submit(&c, &dir, &["-t", "10", "--open-mode=append"], script);
    let latest = dir.join("ck/step0/task0/latest");
    wait_until(&c, Some(&job), "a periodic checkpoint of the step", || {
        latest.exists()
    });
    user_ok(&c, &dir, &["scontrol", "requeue", &job.id.to_string()]);
    let end = final_state(&c, &job);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    c.check(
        result_line(&run.stdout).as_deref() == Some(want.as_str()),
        &format!("result differs from the uninterrupted run's {want:?}"),
        &run,
    );
    let resumed = format!("resuming from {}", dir.join("ck/step0/task0").display());
    c.check(
        run.stderr.contains(&resumed) && run.stderr.contains("SLURM_RESTART_COUNT=1"),
        &format!("the step did not resume after the requeue ({resumed:?})"),
        &run,
    );
}

/// An `srun` step started in the background by the test user, its output
/// and errors in `srun.out` and `srun.err` of `dir`.
struct SrunStep {
    child: std::process::Child,
    command: String,
    out: PathBuf,
    err: PathBuf,
}

impl SrunStep {
    fn start(c: &Cluster, dir: &Path, srun: &[&str]) -> SrunStep {
        let out = dir.join("srun.out");
        let o = fs::File::create(&out).unwrap_or_else(|e| panic!("srun.out: {e}"));
        c.give_to_user(&out);
        let err = dir.join("srun.err");
        let e = fs::File::create(&err).unwrap_or_else(|e| panic!("srun.err: {e}"));
        let child = c
            .user_command(dir, &c.conf, srun)
            .stdout(o)
            .stderr(e)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start srun: {e}"));
        SrunStep {
            child,
            command: srun.join(" "),
            out,
            err,
        }
    }

    /// The last step the program printed so far.
    fn step(&self) -> u32 {
        last_step(&fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Waits for srun to end; its run as a `JobRun` (its output as the
    /// submit command's).
    fn wait(mut self) -> JobRun {
        let status = self.child.wait().unwrap_or_else(|e| panic!("srun: {e}"));
        JobRun {
            command: self.command,
            id: None,
            success: status.success(),
            code: status.code(),
            submit_stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            submit_stderr: fs::read_to_string(&self.err).unwrap_or_default(),
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

#[test]
fn a_step_signal_checkpoints_the_step_and_the_program_survives() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "step-signal");
    let want = reference(&c, &dir, &["python3", "pi.py", "16", "0"], 0);
    let srun = [
        "srun",
        "-Q",
        "-J",
        "ckpt-stepsig",
        "--checkpoint-dir=ck",
        "python3",
        "pi.py",
        "16",
        "0.5",
    ];
    let step = SrunStep::start(&c, &dir, &srun);
    wait_until(&c, None, "step 3 of the srun step", || step.step() >= 3);
    // Slurm delivers this to every process of the step, the program included.
    user_ok(
        &c,
        &dir,
        &["scancel", "--signal=USR1", "--name=ckpt-stepsig"],
    );
    let run = step.wait();
    c.check(run.success, "the step did not survive its signal", &run);
    c.check(
        run.submit_stderr
            .contains("ckpt: SIGUSR1 received: checkpointing")
            && run
                .submit_stderr
                .contains("/ck/step0/task0/gen-000001 written"),
        "no checkpoint on the step's signal",
        &run,
    );
    c.check(
        result_line(&run.submit_stdout).as_deref() == Some(want.as_str()),
        &format!("result differs from the uninterrupted run's {want:?}"),
        &run,
    );
}

/// Slurm sends a step's signals to every process of the step. A program
/// that handles the checkpoint signal itself and starts others (Open MPI's
/// orted forwards SIGUSR1 to its ranks, whose action is the default) must
/// see none of ckpt's requests: its handler is not called, its child does
/// not die; a signal it sends itself still reaches its handler.
#[test]
fn a_program_that_handles_the_step_signal_and_starts_others_never_sees_it() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "step-signal-handled");
    let want = reference(&c, &dir, &["python3", "pi.py", "20", "0"], 0);
    c.write_script(
        &dir.join("guard.py"),
        "import os, signal, subprocess, sys, time\n\
         calls = []\n\
         signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))\n\
         os.kill(os.getpid(), signal.SIGUSR1)\n\
         time.sleep(0.2)\n\
         print(f\"own signal handled {len(calls)}\", flush=True)\n\
         rc = subprocess.call([sys.executable, \"pi.py\"] + sys.argv[1:])\n\
         print(f\"handler calls {len(calls)}\", flush=True)\n\
         sys.exit(rc)\n",
    );
    let srun = [
        "srun",
        "-Q",
        "-J",
        "ckpt-stepsig-handled",
        "--checkpoint-dir=ck",
        "python3",
        "guard.py",
        "20",
        "0.5",
    ];
    let step = SrunStep::start(&c, &dir, &srun);
    for (n, at) in [(1, 3), (2, 8)] {
        wait_until(&c, None, &format!("step {at} of the srun step"), || {
            step.step() >= at
        });
        user_ok(
            &c,
            &dir,
            &["scancel", "--signal=USR1", "--name=ckpt-stepsig-handled"],
        );
        wait_until(&c, None, &format!("checkpoint {n} of the step"), || {
            fs::read_to_string(&step.err)
                .unwrap_or_default()
                .contains(&format!("/ck/step0/task0/gen-00000{n} written"))
        });
    }
    let run = step.wait();
    c.check(
        run.success,
        "the step did not survive its checkpoint signals (the program's child died?)",
        &run,
    );
    for line in ["own signal handled 1", "handler calls 1"] {
        c.check(
            run.submit_stdout.lines().any(|l| l == line),
            &format!("no line {line:?}: the program's handler saw Slurm's signals, or not its own"),
            &run,
        );
    }
    c.check(
        result_line(&run.submit_stdout).as_deref() == Some(want.as_str()),
        &format!("result differs from the uninterrupted run's {want:?}"),
        &run,
    );
}

/// A job checkpointed and requeued on its warning signal, damaged by
/// `damage(workdir, generation dir)` while it is held in the queue, must fail
/// with `why` in its stderr and the slurmd log, and never start over.
fn restart_failure(
    name: &str,
    setup_line: &str,
    damage: impl FnOnce(&Cluster, &Path, &Path),
    why: &str,
) {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, name);
    c.write_script(&dir.join("input.txt"), "input\n");
    let script = format!(
        "#!/bin/bash\n#SBATCH --checkpoint-dir=ck --signal=B:USR1@10\necho started\n{setup_line}\n\
         python3 pi.py 40 0.5\n"
    );
    let job = submit(&c, &dir, &["-t", "10"], &script);
    wait_step(&c, &job, 3);
    user_ok(
        &c,
        &dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    let batch = dir.join("ck/batch");
    let id = job.id.to_string();
    wait_until(&c, Some(&job), "the requeued job to be pending", || {
        batch.join("latest").exists() && state(&c, job.id).as_deref() == Some("PENDING")
    });
    let hold = root_cmd(&c, "scontrol")
        .args(["hold", &id])
        .output()
        .unwrap_or_else(|e| panic!("scontrol hold: {e}"));
    assert!(hold.status.success(), "scontrol hold {id} failed: {hold:?}");
    let gen_dir = fs::read_link(batch.join("latest"))
        .map(|l| batch.join(l))
        .unwrap_or_else(|e| panic!("latest: {e}"));
    damage(&c, &dir, &gen_dir);
    let release = root_cmd(&c, "scontrol")
        .args(["release", &id])
        .output()
        .unwrap_or_else(|e| panic!("scontrol release: {e}"));
    assert!(
        release.status.success(),
        "scontrol release failed: {release:?}"
    );

    let end = final_state(&c, &job);
    let run = job.run();
    c.check(
        end == "FAILED",
        &format!("final state {end}, expected FAILED"),
        &run,
    );
    let message = "cannot resume this task from its checkpoints";
    c.check(
        run.stderr.contains(message) && run.stderr.contains(why),
        &format!("job stderr lacks {message:?} with {why:?}"),
        &run,
    );
    let slurmd_log = fs::read_to_string(c.prefix.join("log/slurmd.log")).unwrap_or_default();
    c.check(
        slurmd_log
            .lines()
            .any(|l| l.contains(message) && l.contains(why)),
        &format!("slurmd.log lacks {message:?} with {why:?}"),
        &run,
    );
    c.check(
        !run.stdout.contains("started") && !run.stdout.contains("RESULT"),
        "the job started again from the beginning",
        &run,
    );
    c.check(
        gen_dir.exists(),
        "the checkpoint was removed after the failure",
        &run,
    );
}

#[test]
fn a_corrupt_image_on_requeue_fails_clearly_and_never_starts_over() {
    restart_failure(
        "corrupt",
        "",
        |c, dir, gen_dir| {
            let image = fs::read_dir(gen_dir)
                .unwrap_or_else(|e| panic!("{}: {e}", gen_dir.display()))
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "img"))
                .unwrap_or_else(|| panic!("no image in {}", gen_dir.display()));
            user_ok(
                c,
                dir,
                &["truncate", "-s", "4096", &image.display().to_string()],
            );
        },
        "(truncated?)",
    );
}

#[test]
fn a_missing_input_file_on_requeue_fails_clearly_and_never_starts_over() {
    // The script keeps input.txt open (fd 3) across the checkpoint.
    restart_failure(
        "missing-file",
        "exec 3< input.txt",
        |c, dir, _| {
            user_ok(c, dir, &["rm", "input.txt"]);
        },
        "input.txt (open as fd 3 of process",
    );
}

#[test]
fn sbatch_without_a_warning_signal_is_told_how_to_get_one() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "nosignal");
    c.write_script(&dir.join("quick.sh"), "#!/bin/bash\ntrue\n");
    let without = c.run_as_user(
        &dir,
        &[
            "sbatch",
            "--wait",
            "-o",
            "/dev/null",
            "--checkpoint-dir=ck",
            "quick.sh",
        ],
    );
    c.check(without.success, "the job failed", &without);
    c.check(
        without.submit_stderr.contains("--signal=B:USR1@120"),
        "sbatch did not suggest a warning signal",
        &without,
    );
    let with = c.run_as_user(
        &dir,
        &[
            "sbatch",
            "--wait",
            "-o",
            "/dev/null",
            "--checkpoint-dir=ck",
            "--signal=B:USR1@60",
            "quick.sh",
        ],
    );
    c.check(with.success, "the job failed", &with);
    c.check(
        !with.submit_stderr.contains("no warning signal"),
        "sbatch warned although --signal was given",
        &with,
    );
}

/// The site's `TaskProlog` and `srun --task-prolog`, which slurmstepd runs
/// after the point where the plugin starts ckpt (docs/slurm-task-order.md):
/// a checkpointed task sees what they export and unset and their print
/// lines, and fails when one fails, exactly as a task without checkpointing.
#[test]
fn task_prologs_apply_to_a_checkpointed_task_as_to_any_other() {
    let Some(c) = slurm::cluster() else { return };
    let dir = c.workdir("task-prolog");
    let site = slurm::SITE_PROLOG_VAR;
    c.write_script(
        &dir.join("user-prolog.sh"),
        &format!(
            "#!/bin/sh\necho 'print hello from the task prolog'\n\
             echo \"export FROM_USER_PROLOG=saw-${site}\"\necho 'unset GONE'\n"
        ),
    );
    let show = format!(
        "echo site=${site} user=$FROM_USER_PROLOG gone=${{GONE-unset}} \
         ctx=$SLURM_SCRIPT_CONTEXT ours=${{SLURM_CKPT_TASK_PROLOG-none}}/\
         ${{CKPT_SITE_TASK_PROLOG-none}} tmp=$TMPDIR"
    );
    let srun = |prolog: &str, checkpoint: bool| {
        let prolog = format!("--task-prolog={prolog}");
        let mut argv = vec!["env", "GONE=1", "srun", "-Q", "-n1", prolog.as_str()];
        if checkpoint {
            argv.push("--checkpoint");
        }
        argv.extend(["sh", "-c", show.as_str()]);
        c.run_as_user(&dir, &argv)
    };
    let user_prolog = dir.join("user-prolog.sh").display().to_string();
    let plain = srun(&user_prolog, false);
    c.check(
        plain.success,
        "the step without checkpointing failed",
        &plain,
    );
    let want = "hello from the task prolog\nsite=ran-prolog_task user=saw-ran-prolog_task \
                gone=unset ctx=prolog_task ours=none/none tmp=/tmp\n";
    c.check(
        plain.submit_stdout == want,
        &format!("Slurm itself gave another output than {want:?}"),
        &plain,
    );
    let checked = srun(&user_prolog, true);
    c.check(checked.success, "the checkpointed step failed", &checked);
    c.check(
        checked.submit_stdout == plain.submit_stdout,
        "the checkpointed task saw another environment than the same task without \
         checkpointing",
        &checked,
    );
    // A failing prolog fails the task, with its status.
    let plain = srun("/bin/false", false);
    let checked = srun("/bin/false", true);
    c.check(
        !plain.success && checked.code == plain.code,
        &format!(
            "with --task-prolog=/bin/false: exit code {:?} checkpointed, {:?} without",
            checked.code, plain.code
        ),
        &checked,
    );
    c.check(
        !checked.submit_stdout.contains("site="),
        "the program ran although its task prolog failed",
        &checked,
    );
}

/// Puts a drained node back into service when dropped (also when the test
/// fails half-way: the cluster is shared).
struct Drained<'a> {
    c: &'a Cluster,
    node: String,
}

impl<'a> Drained<'a> {
    /// Takes `node` out of service (`state=drain`) until dropped.
    fn drain(c: &'a Cluster, node: &str) -> Drained<'a> {
        let d = Drained {
            c,
            node: node.to_owned(),
        };
        root_cmd(c, "scontrol")
            .args([
                "update",
                &format!("nodename={node}"),
                "state=drain",
                "reason=ckpt-test",
            ])
            .output()
            .unwrap_or_else(|e| panic!("scontrol update: {e}"));
        d
    }
}

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        let _ = root_cmd(self.c, "scontrol")
            .args(["update", &format!("nodename={}", self.node), "state=resume"])
            .output();
    }
}

/// A job running on `nodes` nodes is made to move: its first node (where
/// the batch script runs) goes out of service, the batch step gets the
/// warning signal, and the job resumes elsewhere. Returns the nodes before
/// and after, and the drained node (back in service when dropped).
fn move_by_warning<'a>(
    c: &'a Cluster,
    dir: &Path,
    job: &Job,
    nodes: usize,
) -> (Vec<String>, Vec<String>, Drained<'a>) {
    let first = job_nodes(c, job.id);
    c.check(
        first.len() == nodes,
        &format!("the job runs on {first:?}"),
        &job.run(),
    );
    let drained = Drained::drain(c, &first[0]);
    user_ok(
        c,
        dir,
        &["scancel", "--signal=USR1", "--batch", &job.id.to_string()],
    );
    wait_resumed(c, job, 1);
    let second = job_nodes(c, job.id);
    (first, second, drained)
}

/// A one-node batch job that prints `step N` lines: submitted, its node
/// taken out of service at step 4 and the warning signal sent; it must
/// complete on another node with steps 1..=`steps` once each and the
/// uninterrupted run's `want` result.
fn moved_to_another_node(c: &Cluster, dir: &Path, script: &str, steps: u32, want: &str) -> Job {
    let job = submit(c, dir, &["-t", "10"], script);
    wait_step(c, &job, 4);
    let (first, second, drained) = move_by_warning(c, dir, &job, 1);
    let end = final_state(c, &job);
    drop(drained);
    check_completed_elsewhere(c, &job, &end, &first, &second);
    check_continuous(c, &job, steps, want);
    job
}

/// A job moved by [`move_by_warning`] ended well: it completed, and it
/// resumed on nodes without the one taken out of service.
fn check_completed_elsewhere(
    c: &Cluster,
    job: &Job,
    end: &str,
    first: &[String],
    second: &[String],
) {
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    c.check(
        !second.is_empty() && !second.contains(&first[0]),
        &format!(
            "resumed on {second:?}, which includes {}, taken out of service",
            first[0]
        ),
        &run,
    );
}

/// The nodes of a running job, one name each.
fn job_nodes(c: &Cluster, id: u32) -> Vec<String> {
    let list = root_cmd(c, "squeue")
        .args(["-h", "-o", "%N", "-j", &id.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let out = root_cmd(c, "scontrol")
        .args(["show", "hostnames", &list])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace().map(str::to_owned).collect()
}

/// The job came back on nodes without the first one it ran on (`first[0]`,
/// taken out of service), and each rank's output (`srun -l`) is steps
/// 1..=steps once each, then the uninterrupted run's result.
fn check_moved_and_continuous(
    c: &Cluster,
    run: &JobRun,
    first: &[String],
    second: &[String],
    wants: &[String],
    steps: u32,
) {
    c.check(
        !second.is_empty() && !second.contains(&first[0]),
        &format!(
            "resumed on {second:?}, which includes {}, taken out of service",
            first[0]
        ),
        run,
    );
    for (rank, want) in (0u32..).zip(wants) {
        let (got, result) = rank_progress(&run.stdout, rank);
        c.check(
            got == (1..=steps).collect::<Vec<_>>(),
            &format!("rank {rank}: the output is not steps 1..={steps} once each: {got:?}"),
            run,
        );
        c.check(
            result.as_deref() == Some(want.as_str()),
            &format!("rank {rank}: result {result:?}, uninterrupted run gives {want:?}"),
            run,
        );
    }
}

/// The steps of one rank in srun `-l` output, and its result line.
fn rank_progress(text: &str, rank: u32) -> (Vec<u32>, Option<String>) {
    let lines = rank_lines(text, rank);
    let steps = lines
        .iter()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    (steps, lines.into_iter().find(|l| l.starts_with("RESULT")))
}

/// The node the job's batch step runs on fails: drained first, so that it
/// stays out of service when its slurmd registers again (ReturnToService=2
/// would bring a node that is only down back at once), then set down, which
/// makes Slurm kill the job there and requeue it (when requeueable).
fn fail_first_node<'a>(c: &'a Cluster, job: &Job) -> (Vec<String>, Drained<'a>) {
    let first = job_nodes(c, job.id);
    let down = Drained {
        c,
        node: first.first().cloned().unwrap_or_default(),
    };
    for state in ["drain", "down"] {
        root_cmd(c, "scontrol")
            .args([
                "update",
                &format!("nodename={}", down.node),
                &format!("state={state}"),
                "reason=ckpt-test-node-failure",
            ])
            .output()
            .unwrap_or_else(|e| panic!("scontrol update: {e}"));
    }
    (first, down)
}

/// Every rank of step `step` (`step0`) of the job resumed from its own
/// image.
fn check_ranks_resumed(c: &Cluster, run: &JobRun, dir: &Path, step: &str, ranks: u32) {
    for rank in 0..ranks {
        let resumed = format!(
            "resuming from {}/gen-",
            dir.join(format!("ck/{step}/task{rank}")).display()
        );
        c.check(
            run.stderr.contains(&resumed),
            &format!("rank {rank} did not resume from its image ({resumed:?})"),
            run,
        );
    }
}
