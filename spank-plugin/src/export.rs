//! Everything Slurm looks up by name in `libspank_ckpt.so`: the plugin
//! metadata (as C arrays and integers, not pointers: Slurm reads the symbols'
//! storage directly) and the callbacks. Each callback runs under
//! `catch_unwind`; an error or a panic becomes one log line and `-1`.

use std::ffi::{CStr, OsString, c_char, c_int, c_uint};
use std::os::unix::ffi::OsStringExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use slurm_headers::sys;

use crate::error::PluginError;
use crate::hooks;
use crate::spank::{self, Spank};

/// `plugin_name`: also the prefix of the option variables Slurm passes to
/// steps (`_SLURM_SPANK_OPTION_ckpt_checkpoint_dir`).
#[unsafe(no_mangle)]
pub static plugin_name: [u8; 5] = *b"ckpt\0";

/// `plugin_type`: a SPANK plugin.
#[unsafe(no_mangle)]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// `plugin_version`: the major.minor of the Slurm we were built against; the
/// loader refuses any other.
#[unsafe(no_mangle)]
pub static plugin_version: c_uint = slurm_headers::PLUGIN_VERSION;

/// `spank_plugin_version`: the version of this plugin's SPANK interface.
#[unsafe(no_mangle)]
pub static spank_plugin_version: c_uint = 1;

/// Runs a callback; an error or a panic is logged with `slurm_error`, which
/// srun, sbatch and salloc print on their stderr, and which slurmstepd writes
/// to the slurmd log and, in a task callback, also to the job's stderr
/// (observed on 22.05: `slurmstepd-NODE: error: ckpt: ...` in the job's error
/// file).
fn guarded(callback: &'static str, f: impl FnOnce() -> Result<(), PluginError>) -> c_int {
    let error = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e,
        Err(_) => PluginError::Panic(callback),
    };
    spank::log_error(&error.to_string());
    -1
}

/// Copies the plugin's arguments out of Slurm's `argv`, byte for byte (a
/// path in plugstack.conf need not be UTF-8).
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings (or be null with
/// `argc` 0), as Slurm passes them to every callback.
unsafe fn args(argc: c_int, argv: *mut *mut c_char) -> Vec<OsString> {
    let count = usize::try_from(argc).unwrap_or(0);
    if argv.is_null() {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            // SAFETY: i < argc and argv holds argc pointers (contract above),
            // so the offset stays inside that array.
            let slot = unsafe { argv.add(i) };
            // SAFETY: `slot` points at one of the argc initialized entries.
            let arg = unsafe { *slot };
            if arg.is_null() {
                return None;
            }
            // SAFETY: each non-null entry is a NUL-terminated string owned by
            // Slurm for the duration of the callback.
            Some(OsString::from_vec(
                unsafe { CStr::from_ptr(arg) }.to_bytes().to_vec(),
            ))
        })
        .collect()
}

/// Called by Slurm when the plugin is loaded, in every context.
///
/// # Safety
/// Only Slurm calls this: `sp` is a live SPANK handle and `argv` holds `argc`
/// NUL-terminated plugin arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_init", || {
        // SAFETY: Slurm passes its argc/argv pair for this plugin.
        let args = unsafe { args(argc, argv) };
        // SAFETY: `sp` is this callback's handle and `spank` does not escape it.
        let spank = unsafe { Spank::from_raw(sp) };
        hooks::init(&spank, &args, Some(option_callback))
    })
}

/// Called after all options are processed.
///
/// # Safety
/// As for [`slurm_spank_init`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    sp: sys::spank_t,
    _argc: c_int,
    _argv: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_init_post_opt", || {
        // SAFETY: `sp` is this callback's handle and `spank` does not escape it.
        let spank = unsafe { Spank::from_raw(sp) };
        hooks::init_post_opt(&spank)
    })
}

/// Called when the step ends (and in every other context as it exits).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_exit(
    _sp: sys::spank_t,
    _argc: c_int,
    _argv: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_exit", hooks::exit)
}

/// Called in srun once the step exists, before its tasks are launched.
///
/// # Safety
/// As for [`slurm_spank_init`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_local_user_init(
    sp: sys::spank_t,
    _argc: c_int,
    _argv: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_local_user_init", || {
        // SAFETY: `sp` is this callback's handle and `spank` does not escape it.
        let spank = unsafe { Spank::from_raw(sp) };
        hooks::local_user_init(&spank)
    })
}

/// Called in each task, as the job's user, just before it execs.
///
/// # Safety
/// As for [`slurm_spank_init`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_task_init(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_task_init", || {
        // SAFETY: Slurm passes its argc/argv pair for this plugin.
        let args = unsafe { args(argc, argv) };
        // SAFETY: `sp` is this callback's handle and `spank` does not escape it.
        let spank = unsafe { Spank::from_raw(sp) };
        hooks::task_init(&spank, &args)
    })
}

/// The callback of every option (`val` tells which).
extern "C" fn option_callback(val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
    guarded("option callback", || {
        let value = if optarg.is_null() {
            None
        } else {
            // SAFETY: Slurm passes the option's argument as a NUL-terminated
            // string valid for the duration of the callback. Kept byte for
            // byte: a directory need not be UTF-8.
            Some(OsString::from_vec(
                unsafe { CStr::from_ptr(optarg) }.to_bytes().to_vec(),
            ))
        };
        hooks::option(val, value.as_deref())
    })
}
