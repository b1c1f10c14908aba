//! Generates `$OUT_DIR/spank_sys.rs` with bindgen from the installed
//! `<slurm/spank.h>`, and `$OUT_DIR/slurm_version.rs` with the Slurm version of
//! the installed `<slurm/slurm_version.h>`.
//!
//! A missing header stops the build with a message that says which package to
//! install: the plugin must be built against the Slurm it is loaded into
//! (slurmd refuses a plugin whose `plugin_version` differs in major.minor).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// Directories searched for `slurm/spank.h`, in order. `SLURM_INCLUDE_DIR`
/// (a directory that contains `slurm/spank.h`) comes first when set.
const INCLUDE_DIRS: &[&str] = &["/usr/include", "/usr/local/include"];

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");

    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::var_os("SLURM_INCLUDE_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    candidates.extend(INCLUDE_DIRS.iter().map(PathBuf::from));

    let Some(include_dir) = candidates
        .iter()
        .find(|d| d.join("slurm/spank.h").is_file() && d.join("slurm/slurm_version.h").is_file())
    else {
        let searched: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        fail(&format!(
            "slurm/spank.h and slurm/slurm_version.h not found in {}: install libslurm-dev \
             (apt-get install libslurm-dev), or set SLURM_INCLUDE_DIR to the directory that \
             contains slurm/spank.h",
            searched.join(", ")
        ));
    };
    let spank_h = include_dir.join("slurm/spank.h");
    let version_h = include_dir.join("slurm/slurm_version.h");
    println!("cargo:rerun-if-changed={}", spank_h.display());
    println!("cargo:rerun-if-changed={}", version_h.display());
    println!(
        "cargo:rerun-if-changed={}",
        include_dir.join("slurm/slurm.h").display()
    );

    let out_dir = match env::var_os("OUT_DIR") {
        Some(d) => PathBuf::from(d),
        None => fail("OUT_DIR is not set: run this build script through cargo"),
    };

    write_version(&version_h, &out_dir);

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include_dir.display()))
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(info|error|verbose|debug|debug2|debug3|spank_log)")
        .allowlist_type("spank_.*")
        // The public layout of slurmstepd's `slurm_conf` (its TaskProlog).
        .allowlist_type("slurm_conf_t")
        .allowlist_var("ESPANK_.*|SPANK_.*|SLURM_VERSION_NUMBER|SLURM_SUCCESS|SLURM_ERROR")
        .constified_enum_module("spank_context")
        .constified_enum_module("spank_item")
        .constified_enum_module("spank_err")
        .layout_tests(false)
        .generate();
    let bindings = match bindings {
        Ok(b) => b,
        Err(e) => fail(&format!(
            "bindgen failed on {}: {e}; is libclang installed (apt-get install libclang-dev)?",
            spank_h.display()
        )),
    };
    // bindgen 0.70 emits `extern "C" {`, which edition 2024 rejects: foreign
    // blocks must be spelled `unsafe extern`.
    let code = bindings
        .to_string()
        .replace("\nextern \"C\" {", "\nunsafe extern \"C\" {");
    let path = out_dir.join("spank_sys.rs");
    if let Err(e) = fs::write(&path, code) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}

/// Reads `#define SLURM_VERSION_NUMBER 0xMMmmuu` and writes the version
/// constants. Only major.minor matter to the plugin loader, so the patch level
/// is kept separately.
fn write_version(version_h: &Path, out_dir: &Path) {
    let text = match fs::read_to_string(version_h) {
        Ok(t) => t,
        Err(e) => fail(&format!("cannot read {}: {e}", version_h.display())),
    };
    let number = text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#define"), Some("SLURM_VERSION_NUMBER"), Some(value)) => {
                let hex = value
                    .strip_prefix("0x")
                    .or_else(|| value.strip_prefix("0X"))?;
                u32::from_str_radix(hex, 16).ok()
            }
            _ => None,
        }
    });
    let Some(number) = number else {
        fail(&format!(
            "no `#define SLURM_VERSION_NUMBER 0x...` in {}: reinstall libslurm-dev",
            version_h.display()
        ));
    };
    let major = (number >> 16) & 0xff;
    let minor = (number >> 8) & 0xff;
    let micro = number & 0xff;
    let code = format!(
        "/// `SLURM_VERSION_NUMBER` of the installed `slurm/slurm_version.h` ({major}.{minor:02}.{micro}).\n\
         pub const SLURM_VERSION_NUMBER: u32 = {number:#08x};\n\
         /// Major Slurm release (the year, e.g. 22 for 22.05).\n\
         pub const SLURM_VERSION_MAJOR: u32 = {major};\n\
         /// Minor Slurm release (the month, e.g. 5 for 22.05).\n\
         pub const SLURM_VERSION_MINOR: u32 = {minor};\n\
         /// Patch level of the installed headers (ignored by the plugin loader).\n\
         pub const SLURM_VERSION_MICRO: u32 = {micro};\n"
    );
    if let Err(e) = fs::write(out_dir.join("slurm_version.rs"), code) {
        fail(&format!("cannot write slurm_version.rs: {e}"));
    }
}

fn fail(message: &str) -> ! {
    // cargo shows the panic message of a build script as the build error.
    panic!("slurm-headers: {message}");
}
