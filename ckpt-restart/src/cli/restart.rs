//! `ckpt restart --dir D`: resume the newest complete generation.

use std::path::PathBuf;

use super::{Failure, Opts, need_dir};
use crate::ns;
use crate::restore::tree;
use ckpt::image::generation::{CheckpointDir, LoadedGeneration};
use ckpt::image::manifest::ProcessManifest;

/// Checks that can be made before committing to a generation.
fn check_host(m: &ProcessManifest) -> Result<(), String> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if m.uid != uid {
        return Err(format!(
            "the image belongs to uid {}, not to you (uid {uid}); refusing to restore another user's program",
            m.uid
        ));
    }
    crate::restore::vdso::check(m)?;
    crate::cpu::check(&m.cpu)?;
    Ok(())
}

/// Pick the generations to try, newest first; explain the ones skipped.
fn candidates(
    dir: &CheckpointDir,
    at_most: Option<u64>,
    exact: bool,
    moved_script: Option<&std::path::Path>,
) -> Result<Vec<LoadedGeneration>, Failure> {
    let mut ok = Vec::new();
    let mut reasons = Vec::new();
    for (path, r) in dir.candidates()? {
        if let Ok(g) = &r
            && at_most.is_some_and(|n| g.record.number > n || (exact && g.record.number != n))
        {
            continue;
        }
        let r = r.map(|mut g| {
            if let Some(script) = moved_script {
                crate::restore::names::follow_moved_script(&mut g, script);
            }
            g
        });
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match r.map_err(|e| e.to_string()).and_then(|g| {
            for p in &g.processes {
                check_host(p)?;
            }
            Ok(g)
        }) {
            Ok(g) => ok.push(g),
            Err(e) => {
                if ok.is_empty() {
                    eprintln!("ckpt: cannot use {name}: {e}");
                }
                reasons.push(format!("{name}: {e}"));
            }
        }
    }
    if ok.is_empty() {
        let mut msg = format!("no restorable checkpoint in {}", dir.path().display());
        if reasons.is_empty() {
            msg.push_str(
                " (it holds no complete generation; was the job ever checkpointed there?)",
            );
        }
        return Err(Failure { msg, code: 1 });
    }
    Ok(ok)
}

fn init_main(
    gens: &[LoadedGeneration],
    socket: &std::path::Path,
    set: &libc::sigset_t,
    verify: bool,
    track: bool,
) -> ! {
    if let Err(e) = ns::setup_mounts() {
        eprintln!("ckpt: {e}");
        ckpt::signal_safe::raw::exit_group(1);
    }
    let newest = &gens[0].processes[0];
    if let Err(e) = ns::setup_time(newest.monotonic_ns, newest.boottime_ns) {
        eprintln!("ckpt: warning: cannot keep the program's clocks continuous: {e}");
    }
    for (i, g) in gens.iter().enumerate() {
        if let tree::Attempt::Running(main) = tree::restore(g, socket, verify, track) {
            let code = ns::supervise(set, main, main, |_| false);
            ckpt::signal_safe::raw::exit_group(code);
        }
        let name = g
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match gens.get(i + 1) {
            Some(next) => eprintln!(
                "ckpt: restoring {name} failed; falling back to the previous checkpoint {}",
                next.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            None => eprintln!(
                "ckpt: restoring {name} failed and there is no older checkpoint to fall back to"
            ),
        }
    }
    ckpt::signal_safe::raw::exit_group(1)
}

/// Run the subcommand.
pub fn run(o: &Opts) -> Result<i32, Failure> {
    run_with(o, &mut |_, _| false)
}

/// Run the subcommand with a signal hook for the outer process (see
/// [`super::launch::OnSignal`]).
pub fn run_with(o: &Opts, on_signal: super::launch::OnSignal<'_>) -> Result<i32, Failure> {
    let dir = CheckpointDir::open(&need_dir(o)?)?;
    let gens = candidates(
        &dir,
        o.generation,
        o.exact_generation,
        o.batch_script.as_deref(),
    )?;
    let (sock_path, listener): (PathBuf, _) = super::launch::claim_socket(&dir, true)?;
    let command = gens[0].record.command.clone();
    let set = ns::block_signals();
    if let Some(why) = super::check::set_tid_unavailable() {
        eprintln!("ckpt: {why}");
        crate::restore::pids::use_last_pid();
    }
    match super::check::namespaces_or_diagnosis()? {
        None => {
            drop(listener);
            let track = o.incremental.tracking(o.interval)
                && super::check::incremental_unavailable().is_none();
            init_main(&gens, &sock_path, &set, !o.no_verify, track)
        }
        Some(init) => Ok(super::launch::run_outer(
            super::launch::Outer {
                dir: &dir,
                command,
                opts: o,
                socket: &sock_path,
                listener,
                set: &set,
            },
            init.as_raw(),
            on_signal,
        )),
    }
}
