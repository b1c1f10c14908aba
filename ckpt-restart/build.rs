//! Builds stage 2 of the restorer (restorer.c) as freestanding,
//! position-independent code in its own section.
fn main() {
    println!("cargo:rerun-if-changed=src/restorer/restorer.c");
    println!("cargo:rerun-if-changed=src/restorer/restorer.h");
    cc::Build::new()
        .file("src/restorer/restorer.c")
        .flag("-ffreestanding")
        .flag("-fno-builtin")
        .flag("-fno-stack-protector")
        .flag("-fno-jump-tables")
        .flag("-fno-tree-loop-distribute-patterns")
        .flag("-fno-asynchronous-unwind-tables")
        .flag("-fPIC")
        .flag("-msse4.2")
        .flag("-mno-red-zone")
        .opt_level(2)
        .compile("ckpt_restorer");
}
