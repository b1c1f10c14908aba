//! Real-Slurm tests of the SPANK plugin: options, refusals at submission,
//! the task environment of batch jobs, their steps and direct sruns, the
//! checkpoint directory, and the plugstack.conf arguments.
//!
//! Every test takes the cluster guard first (`slurm::cluster()`), which
//! starts the cluster once and runs the tests one at a time. To add a test:
//! get the guard, make a `c.workdir("name")`, submit with `c.sbatch(...)` or
//! `c.run_as_user(...)`, and assert with `c.check(...)` so that a failure
//! prints the job's output and the daemons' logs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use ckpt_tests::slurm::{self, Cluster, JobRun, TEST_USER};

mod lifecycle;

/// Prints, for role `$1`, each variable the plugin sets and whether
/// libckpt.so is mapped into the process (it is preloaded into this bash).
const SHOW: &str = r#"#!/bin/bash
role=$1
for v in LD_PRELOAD CKPT_DIR CKPT_INTERVAL CKPT_SIGNAL CKPT_BIN; do
  echo "$role $v=${!v-<unset>}"
done
echo "$role MAPPED=$(grep -c 'libckpt\.so' /proc/$$/maps)"
echo "$role JOB=$SLURM_JOB_ID"
echo "$role RAN=yes"
"#;

/// What SHOW printed, by role then variable.
fn parse_show(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines() {
        let Some((role, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((key, value)) = rest.split_once('=') else {
            continue;
        };
        out.entry(role.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
    }
    out
}

fn setup(c: &Cluster, name: &str) -> PathBuf {
    let dir = c.workdir(name);
    c.write_script(&dir.join("show.sh"), SHOW);
    dir
}

/// Asserts the variables of one role in a checkpointed task.
fn check_injected(
    c: &Cluster,
    run: &JobRun,
    vars: &BTreeMap<String, BTreeMap<String, String>>,
    role: &str,
    expect: &Expect<'_>,
) {
    let Some(v) = vars.get(role) else {
        c.fail(&format!("no output from role {role}"), Some(run));
    };
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("<missing>");
    let lib = c.install.libckpt.display().to_string();
    let want_preload = match expect.other_preload {
        Some(other) => format!("{lib}:{other}"),
        None => lib,
    };
    let checks = [
        ("LD_PRELOAD", want_preload),
        ("CKPT_DIR", expect.dir.display().to_string()),
        ("CKPT_INTERVAL", expect.interval.to_string()),
        ("CKPT_SIGNAL", "USR1".to_owned()),
        ("CKPT_BIN", c.install.ckpt_bin.display().to_string()),
    ];
    for (key, want) in checks {
        c.check(
            get(key) == want,
            &format!("{role}: {key} is {:?}, expected {want:?}", get(key)),
            run,
        );
    }
    c.check(
        get("MAPPED") != "0" && get("MAPPED") != "<missing>",
        &format!("{role}: libckpt.so is not mapped in the task"),
        run,
    );
}

struct Expect<'a> {
    dir: &'a Path,
    interval: u64,
    other_preload: Option<&'a str>,
}

/// Asserts a role saw none of the plugin's variables.
fn check_untouched(
    c: &Cluster,
    run: &JobRun,
    vars: &BTreeMap<String, BTreeMap<String, String>>,
    role: &str,
    preload: Option<&str>,
) {
    let Some(v) = vars.get(role) else {
        c.fail(&format!("no output from role {role}"), Some(run));
    };
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("<missing>");
    let want_preload = preload.unwrap_or("<unset>");
    c.check(
        get("LD_PRELOAD") == want_preload,
        &format!(
            "{role}: LD_PRELOAD is {:?}, expected {want_preload:?}",
            get("LD_PRELOAD")
        ),
        run,
    );
    for key in ["CKPT_DIR", "CKPT_INTERVAL", "CKPT_SIGNAL", "CKPT_BIN"] {
        c.check(
            get(key) == "<unset>",
            &format!("{role}: {key} is set: {:?}", get(key)),
            run,
        );
    }
    c.check(
        get("MAPPED") == "0",
        &format!("{role}: libckpt.so is mapped"),
        run,
    );
}

/// Asserts `dir` is a directory of the test user with mode 0700.
fn check_dir(c: &Cluster, dir: &Path, run: &JobRun) {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => c.fail(&format!("checkpoint dir {}: {e}", dir.display()), Some(run)),
    };
    c.check(
        meta.is_dir(),
        &format!("{} is not a directory", dir.display()),
        run,
    );
    c.check(
        meta.uid() == c.uid,
        &format!(
            "{} belongs to uid {}, not {TEST_USER}",
            dir.display(),
            meta.uid()
        ),
        run,
    );
    c.check(
        meta.permissions().mode() & 0o7777 == 0o700,
        &format!(
            "{} has mode {:o}, not 700",
            dir.display(),
            meta.permissions().mode() & 0o7777
        ),
        run,
    );
}

/// A library that is harmless to preload, to play "the user's own
/// LD_PRELOAD" (glibc 2.34+ keeps an empty libdl.so.2 for compatibility).
fn other_preload() -> String {
    for dir in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
    ] {
        let p = Path::new(dir).join("libdl.so.2");
        if p.is_file() {
            return p.display().to_string();
        }
    }
    panic!("libdl.so.2 not found in the usual library directories");
}

#[test]
fn options_are_listed_in_help() {
    let Some(c) = slurm::cluster() else { return };
    let dir = c.workdir("help");
    for tool in ["sbatch", "srun", "salloc"] {
        let run = c.run_as_user(&dir, &[tool, "--help"]);
        c.check(run.success, &format!("{tool} --help failed"), &run);
        for needle in [
            "--checkpoint-dir=DIR",
            "--checkpoint-interval=SECONDS",
            "--checkpoint ",
            "%j (job id)",
            "30s, 5m, 2h",
        ] {
            c.check(
                run.submit_stdout.contains(needle),
                &format!("{tool} --help does not mention {needle:?}"),
                &run,
            );
        }
    }
}

/// slurmd runs `ckpt check` (as `nobody`) when it loads the plugin and logs
/// the verdict, one line per problem before it (`spank-plugin/src/node_check.rs`).
#[test]
fn slurmd_logs_the_node_check_when_it_loads_the_plugin() {
    let Some(c) = slurm::cluster() else { return };
    let log = c.prefix.join("log/slurmd.log");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("ckpt: node check: this node can run checkpointed jobs"),
        "{} has no node check verdict:\n{}",
        log.display(),
        text.lines()
            .filter(|l| l.contains("ckpt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn bad_values_are_refused_at_submission_and_nothing_is_queued() {
    let Some(c) = slurm::cluster() else { return };
    let dir = c.workdir("refused");
    let cases: &[(&str, &str)] = &[
        (
            "--checkpoint-interval=abc",
            "--checkpoint-interval=abc: not a number",
        ),
        (
            "--checkpoint-interval=-5",
            "--checkpoint-interval=-5: negative",
        ),
        (
            "--checkpoint-interval=",
            "--checkpoint-interval=: empty value",
        ),
        (
            "--checkpoint-interval=5d",
            "--checkpoint-interval=5d: unknown suffix",
        ),
        (
            "--checkpoint-interval=5",
            "--checkpoint-interval=5: must be 0 (no periodic checkpoint) or at least 10 seconds",
        ),
        ("--checkpoint-dir=", "--checkpoint-dir=: empty directory"),
        (
            "--checkpoint-dir=/x/%q",
            "--checkpoint-dir=/x/%q: unknown escape %q",
        ),
    ];
    for (i, (option, message)) in cases.iter().enumerate() {
        for tool in ["sbatch", "srun"] {
            let name = format!("refused-{tool}-{i}");
            let job_name = format!("--job-name={name}");
            let argv: Vec<&str> = if tool == "sbatch" {
                vec!["sbatch", &job_name, option, "--wrap", "touch ran"]
            } else {
                vec!["srun", "-Q", &job_name, option, "touch", "ran"]
            };
            let run = c.run_as_user(&dir, &argv);
            c.check(!run.success, &format!("{tool} {option} was accepted"), &run);
            c.check(
                run.submit_stderr.contains(&format!("ckpt: {message}")),
                &format!("{tool} {option}: message {message:?} missing"),
                &run,
            );
            if message.contains("interval") && !message.contains("at least") {
                c.check(
                    run.submit_stderr.contains("30s, 5m, 2h"),
                    &format!("{tool} {option}: accepted forms not shown"),
                    &run,
                );
            }
            let queued = c.jobs_named(&name);
            c.check(
                queued.is_empty(),
                &format!("{tool} {option} queued a job: {queued}"),
                &run,
            );
            c.check(
                !dir.join("ran").exists(),
                &format!("{tool} {option}: the command ran"),
                &run,
            );
        }
    }
}

#[test]
fn batch_job_its_steps_and_direct_srun_get_libckpt_and_settings() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "inject");
    c.write_script(
        &dir.join("job.sh"),
        "#!/bin/bash\n./show.sh batch\ncd /\nsrun -Q \"$OLDPWD/show.sh\" step\n",
    );
    let run = c.sbatch(
        &dir,
        &["--checkpoint-dir=ck/%u/%j", "--checkpoint-interval=1m"],
        "job.sh",
    );
    c.check(run.success, "checkpointed batch job failed", &run);
    let id = run.id.unwrap_or_else(|| c.fail("no job id", Some(&run)));
    let vars = parse_show(&run.stdout);
    // Relative to the submit directory, even for a step started elsewhere.
    let ckdir = dir.join(format!("ck/{TEST_USER}/{id}"));
    let expect = Expect {
        dir: &ckdir,
        interval: 60,
        other_preload: None,
    };
    check_injected(&c, &run, &vars, "batch", &expect);
    check_injected(&c, &run, &vars, "step", &expect);
    check_dir(&c, &ckdir, &run);
    check_dir(&c, &dir.join("ck"), &run);
    check_dir(&c, &dir.join(format!("ck/{TEST_USER}")), &run);

    let run = c.run_as_user(
        &dir,
        &[
            "srun",
            "-Q",
            "--checkpoint-dir=direct-%j",
            "--checkpoint-interval=2h",
            "./show.sh",
            "direct",
        ],
    );
    c.check(run.success, "checkpointed srun failed", &run);
    let vars = parse_show(&run.submit_stdout);
    let job = vars
        .get("direct")
        .and_then(|v| v.get("JOB"))
        .cloned()
        .unwrap_or_default();
    let ckdir = dir.join(format!("direct-{job}"));
    let expect = Expect {
        dir: &ckdir,
        interval: 7200,
        other_preload: None,
    };
    check_injected(&c, &run, &vars, "direct", &expect);
    check_dir(&c, &ckdir, &run);
}

#[test]
fn steps_of_a_salloc_allocation_get_libckpt_and_settings() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "salloc");
    let ckdir = dir.join("sa");
    let opt = format!("--checkpoint-dir={}", ckdir.display());
    // salloc's own command runs on the submit host, outside any task: only
    // the steps it starts are checkpointed.
    let run = c.run_as_user(
        &dir,
        &[
            "salloc",
            "-Q",
            &opt,
            "--checkpoint-interval=30s",
            "srun",
            "-Q",
            "./show.sh",
            "step",
        ],
    );
    c.check(run.success, "salloc with the options failed", &run);
    let expect = Expect {
        dir: &ckdir,
        interval: 30,
        other_preload: None,
    };
    check_injected(&c, &run, &parse_show(&run.submit_stdout), "step", &expect);
    check_dir(&c, &ckdir, &run);
}

#[test]
fn an_existing_ld_preload_is_kept_after_libckpt() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "preload");
    let other = other_preload();
    c.write_script(
        &dir.join("job.sh"),
        "#!/bin/bash\n./show.sh batch\nsrun -Q ./show.sh step\n",
    );
    let export = format!("--export=ALL,LD_PRELOAD={other}");
    let ckdir = dir.join("ck");
    let dir_opt = format!("--checkpoint-dir={}", ckdir.display());
    let run = c.sbatch(&dir, &[&export, &dir_opt], "job.sh");
    c.check(run.success, "batch job with LD_PRELOAD failed", &run);
    let vars = parse_show(&run.stdout);
    let expect = Expect {
        dir: &ckdir,
        interval: 0,
        other_preload: Some(&other),
    };
    check_injected(&c, &run, &vars, "batch", &expect);
    check_injected(&c, &run, &vars, "step", &expect);

    let run = c.run_as_user(
        &dir,
        &["srun", "-Q", &export, &dir_opt, "./show.sh", "direct"],
    );
    c.check(run.success, "srun with LD_PRELOAD failed", &run);
    check_injected(&c, &run, &parse_show(&run.submit_stdout), "direct", &expect);
}

#[test]
fn a_job_without_the_options_is_untouched() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "untouched");
    c.write_script(
        &dir.join("job.sh"),
        "#!/bin/bash\n./show.sh batch\nsrun -Q ./show.sh step\n",
    );
    let run = c.sbatch(&dir, &[], "job.sh");
    c.check(run.success, "plain batch job failed", &run);
    let vars = parse_show(&run.stdout);
    check_untouched(&c, &run, &vars, "batch", None);
    check_untouched(&c, &run, &vars, "step", None);

    let other = other_preload();
    let export = format!("--export=ALL,LD_PRELOAD={other}");
    let run = c.run_as_user(&dir, &["srun", "-Q", &export, "./show.sh", "direct"]);
    c.check(run.success, "plain srun failed", &run);
    check_untouched(
        &c,
        &run,
        &parse_show(&run.submit_stdout),
        "direct",
        Some(&other),
    );
    let entries: Vec<_> = fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    c.check(
        !entries
            .iter()
            .any(|n| n.to_string_lossy().starts_with("ck")),
        "a checkpoint directory was created for a job without the options",
        &run,
    );
}

#[test]
fn dir_patterns_expand_job_user_name_and_array() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "expand");
    c.write_script(
        &dir.join("job.sh"),
        "#!/bin/bash\n./show.sh batch\necho \"batch ARRAY=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n",
    );
    let pattern = format!("--checkpoint-dir={}/%u/%x/%A_%a/%j", dir.display());
    let run = c.sbatch(
        &dir,
        &["--job-name=expand-me", "--array=3", &pattern],
        "job.sh",
    );
    c.check(run.success, "array job failed", &run);
    let vars = parse_show(&run.stdout);
    let batch = vars.get("batch").cloned().unwrap_or_default();
    let job = batch.get("JOB").cloned().unwrap_or_default();
    let array = batch.get("ARRAY").cloned().unwrap_or_default();
    c.check(
        array.ends_with("_3") && !job.is_empty(),
        &format!("unexpected array ids {array:?} / job {job:?}"),
        &run,
    );
    let ckdir = dir.join(format!("{TEST_USER}/expand-me/{array}/{job}"));
    let expect = Expect {
        dir: &ckdir,
        interval: 0,
        other_preload: None,
    };
    check_injected(&c, &run, &vars, "batch", &expect);
    check_dir(&c, &ckdir, &run);
}

#[test]
fn bare_opt_in_uses_the_site_default_dir() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "bare");
    c.write_script(&dir.join("job.sh"), "#!/bin/bash\n./show.sh batch\n");
    let run = c.sbatch(&dir, &["--checkpoint"], "job.sh");
    c.check(run.success, "--checkpoint job failed", &run);
    let id = run.id.unwrap_or_else(|| c.fail("no job id", Some(&run)));
    let ckdir = slurm::default_dir_root(&c.prefix).join(format!("{TEST_USER}/{id}"));
    let expect = Expect {
        dir: &ckdir,
        interval: 0,
        other_preload: None,
    };
    check_injected(&c, &run, &parse_show(&run.stdout), "batch", &expect);
    check_dir(&c, &ckdir, &run);

    // Without a site default, a bare opt-in is refused at submission.
    let line = format!("required {}", c.install.plugin.display());
    let conf = c.conf_with_plugstack("no-default", &line);
    let run = c.run_with_conf(
        &dir,
        &conf,
        &[
            "sbatch",
            "--job-name=no-default",
            "--checkpoint",
            "--wrap",
            "true",
        ],
    );
    c.check(
        !run.success,
        "--checkpoint without any directory was accepted",
        &run,
    );
    c.check(
        run.submit_stderr
            .contains("ckpt: no checkpoint directory: add --checkpoint-dir=DIR"),
        "missing 'no checkpoint directory' message",
        &run,
    );
    c.check(
        c.jobs_named("no-default").is_empty(),
        "a job was queued",
        &run,
    );
}

/// Submits a checkpointed job into `ckdir` with sbatch and srun and asserts
/// both fail before running the command, with `message` on the job's stderr.
fn check_refused_dir(c: &Cluster, dir: &Path, ckdir: &Path, message: &str) {
    let opt = format!("--checkpoint-dir={}", ckdir.display());
    let run = c.sbatch(dir, &[&opt], "show.sh");
    c.check(
        !run.success,
        "job with a refused checkpoint dir succeeded",
        &run,
    );
    c.check(
        run.stderr.contains(message),
        &format!("job stderr lacks {message:?}"),
        &run,
    );
    c.check(
        !run.stdout.contains("RAN=yes"),
        "the job's command ran",
        &run,
    );

    let run = c.run_as_user(dir, &["srun", "-Q", &opt, "./show.sh", "direct"]);
    c.check(
        !run.success,
        "srun with a refused checkpoint dir succeeded",
        &run,
    );
    c.check(
        run.submit_stderr.contains(message),
        &format!("srun stderr lacks {message:?}"),
        &run,
    );
    c.check(
        !run.submit_stdout.contains("RAN=yes"),
        "the step's command ran",
        &run,
    );
}

#[test]
fn a_directory_of_another_user_is_refused() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "foreign");
    let foreign = dir.join("foreign");
    fs::create_dir(&foreign).unwrap();
    // World-writable, so only the owner check can refuse it.
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    check_refused_dir(
        &c,
        &dir,
        &foreign,
        &format!(
            "checkpoint directory {} belongs to nobody (uid 65534), not to the job's user \
             {TEST_USER} (uid {}): refusing to write checkpoint images there",
            foreign.display(),
            c.uid
        ),
    );
    let left: Vec<_> = fs::read_dir(&foreign).unwrap().collect();
    assert!(
        left.is_empty(),
        "something was written into the foreign directory: {left:?}"
    );
}

#[test]
fn a_symlink_planted_by_another_user_is_refused() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "planted");
    // A shared sticky directory, like /tmp, where another user plants a link
    // to a directory the victim owns.
    let shared = dir.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let target = dir.join("target");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
    c.give_to_user(&target);
    let link = shared.join("ckpt");
    symlink(&target, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    check_refused_dir(
        &c,
        &dir,
        &link,
        &format!(
            "{} is a symlink owned by nobody (uid 65534), not by the job's user {TEST_USER} \
             (uid {}) or root: refusing to follow it",
            link.display(),
            c.uid
        ),
    );
    let left: Vec<_> = fs::read_dir(&target).unwrap().collect();
    assert!(
        left.is_empty(),
        "something was written through the planted link: {left:?}"
    );
}

#[test]
fn a_malformed_plugstack_argument_stops_the_plugin_from_loading() {
    let Some(c) = slurm::cluster() else { return };
    let dir = c.workdir("badargs");
    let plugin = c.install.plugin.display().to_string();
    let cases = [
        (
            "bogus=1",
            "the ckpt plugin is not loaded: unknown plugstack.conf argument 'bogus=1'; accepted: default_dir=PATTERN",
        ),
        (
            "min_interval",
            "the ckpt plugin is not loaded: plugstack.conf argument 'min_interval' is not key=value",
        ),
        (
            "signal=KILL",
            "the ckpt plugin is not loaded: plugstack.conf argument signal=KILL: not a signal",
        ),
        (
            "libckpt=relative.so",
            "the ckpt plugin is not loaded: plugstack.conf argument libckpt=relative.so: must be an absolute path",
        ),
    ];
    for (i, (arg, message)) in cases.iter().enumerate() {
        // required: the submitting command refuses to run at all.
        let conf = c.conf_with_plugstack(
            &format!("bad-required-{i}"),
            &format!("required {plugin} {arg}"),
        );
        let name = format!("badargs-{i}");
        let job_name = format!("--job-name={name}");
        let run = c.run_with_conf(&dir, &conf, &["sbatch", &job_name, "--wrap", "true"]);
        c.check(
            !run.success,
            &format!("sbatch ran with plugin argument {arg}"),
            &run,
        );
        c.check(
            run.submit_stderr.contains(message),
            &format!("message {message:?} missing"),
            &run,
        );
        c.check(c.jobs_named(&name).is_empty(), "a job was queued", &run);

        // optional: jobs without checkpointing still run, but asking for it
        // is refused with the reason instead of running unprotected.
        let conf = c.conf_with_plugstack(
            &format!("bad-optional-{i}"),
            &format!("optional {plugin} {arg}"),
        );
        let run = c.run_with_conf(
            &dir,
            &conf,
            &["srun", "-Q", &job_name, "--checkpoint-dir=/tmp/x", "true"],
        );
        c.check(
            !run.success,
            &format!("srun --checkpoint-dir ran with plugin argument {arg}"),
            &run,
        );
        c.check(
            run.submit_stderr
                .contains("ckpt: checkpointing is unavailable on this cluster"),
            "missing 'checkpointing is unavailable' message",
            &run,
        );
        c.check(c.jobs_named(&name).is_empty(), "a job was queued", &run);
    }
}

/// Moves a file away for the life of the guard.
struct MovedAway {
    path: PathBuf,
    away: PathBuf,
}

impl MovedAway {
    fn new(path: &Path) -> Self {
        let away = path.with_extension("moved-away");
        fs::rename(path, &away)
            .unwrap_or_else(|e| panic!("mv {} {}: {e}", path.display(), away.display()));
        Self {
            path: path.to_owned(),
            away,
        }
    }
}

impl Drop for MovedAway {
    fn drop(&mut self) {
        let _ = fs::rename(&self.away, &self.path);
    }
}

#[test]
fn a_task_fails_clearly_when_libckpt_is_not_installed_on_the_node() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "nolib");
    let _moved = MovedAway::new(&c.install.libckpt);
    let message = format!(
        "ckpt: preload library {} is not usable on this node",
        c.install.libckpt.display()
    );
    let run = c.run_as_user(
        &dir,
        &["srun", "-Q", "--checkpoint-dir=ck", "./show.sh", "direct"],
    );
    c.check(
        !run.success,
        "the task ran without its preload library",
        &run,
    );
    c.check(
        run.submit_stderr.contains(&message),
        &format!("missing {message:?}"),
        &run,
    );
    c.check(
        !run.submit_stdout.contains("RAN=yes"),
        "the task's command ran",
        &run,
    );
}
