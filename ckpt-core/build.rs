//! Link flags for the preload library `libckpt.so` (the cdylib only; the rlib
//! and everything built from it are unaffected).
//!
//! libckpt.so is mapped into every process of a checkpointed program, and
//! every mapping it brings costs time on each `fork` (the kernel duplicates
//! each VMA and its anon_vma chain, and tears them down again at exit).
//! bench/micro.c's fork+wait was 6-11% slower preloaded than plain; an empty
//! C shared object costs about 4-5%, so the VMA count is the lever:
//!
//! - Link the unwinder statically (`libgcc_eh.a`) instead of depending on
//!   `libgcc_s.so.1`: that shared object alone adds 5 mappings to programs
//!   that do not load it themselves (plain C programs), about half of the
//!   fork overhead. `--whole-archive` is needed because rustc puts `-lgcc_s`
//!   first and a shared definition keeps the linker from fetching archive
//!   members; with its `_Unwind_*` references resolved here, `--as-needed`
//!   drops `libgcc_s.so.1` from DT_NEEDED. The version script rustc generates
//!   keeps these symbols local, so the program's own unwinder (libgcc_s, if
//!   it loads one) is not interposed; panics inside libckpt are raised and
//!   caught by its private copy, which reads every object's unwind tables
//!   through `dl_iterate_phdr` like the shared one.
//!
//! Only done for gnu targets with panic=unwind, where rustc links gcc_s.
//! (Merging segments would save one or two mappings more, about 0.6% each:
//! `--no-rosegment` is lld-only, and `-z norelro` gives up RELRO.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The variadic exec wrappers (stable Rust cannot define C-variadic
    // functions): see src/preload/execl.c.
    println!("cargo:rerun-if-changed=src/preload/execl.c");
    cc::Build::new()
        .file("src/preload/execl.c")
        .flag("-fvisibility=hidden")
        .warnings(true)
        .compile("ckpt_execl");
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let panic = std::env::var("CARGO_CFG_PANIC").unwrap_or_default();
    if os == "linux" && env == "gnu" && panic == "unwind" {
        for a in ["-Wl,--whole-archive", "-lgcc_eh", "-Wl,--no-whole-archive"] {
            println!("cargo:rustc-link-arg-cdylib={a}");
        }
    }
}
