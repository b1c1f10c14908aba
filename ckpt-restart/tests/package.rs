//! `scripts/package.sh`: the Debian package holds every file with the right
//! owner and mode, its control fields name the version, the libraries and
//! the Slurm release the plugin was built for, its plugstack.conf line names
//! the package's paths, and the man pages render without warnings; the RPM
//! spec parses.
//!
//! Packages the existing release build (`cargo build --release --workspace`
//! first): a few seconds. Needs dpkg-deb and binutils; under `CI=true` a
//! missing prerequisite fails instead of skipping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Under CI a missing prerequisite panics; elsewhere it prints SKIP.
fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        !ci(),
        "missing prerequisite (CI=true, so this fails instead of skipping): {what}"
    );
    eprintln!("SKIP (CI is not true): missing prerequisite: {what}");
    false
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The release build: `target/release` beside this test's profile directory.
fn release_dir() -> PathBuf {
    let profile = Path::new(env!("CARGO_BIN_EXE_ckpt"))
        .parent()
        .expect("profile directory");
    profile.parent().expect("target directory").join("release")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ckpt-package-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `scripts/package.sh deb` into a scratch directory; the .deb's path.
fn build_deb(out: &Path) -> Option<PathBuf> {
    let bin = release_dir();
    let built = ["ckpt", "libckpt.so", "libspank_ckpt.so"]
        .iter()
        .all(|f| bin.join(f).is_file());
    if !prerequisite(
        built,
        &format!(
            "the release build in {} (cargo build --release --workspace)",
            bin.display()
        ),
    ) || !prerequisite(have("dpkg-deb"), "dpkg-deb")
        || !prerequisite(
            have("strip") && have("nm") && have("objdump"),
            "binutils (strip, nm, objdump)",
        )
    {
        return None;
    }
    let o = run(Command::new(repo().join("scripts/package.sh"))
        .arg("deb")
        .env("CKPT_PACKAGE_FROM", &bin)
        .env("CKPT_PACKAGE_OUT", out));
    let deb = out.join(format!("ckpt_{VERSION}_amd64.deb"));
    assert!(deb.is_file(), "no {}: {}", deb.display(), text(&o));
    Some(deb)
}

#[test]
fn the_deb_holds_every_file_with_its_mode_and_the_control_fields() {
    let out = scratch("deb");
    let Some(deb) = build_deb(&out) else { return };

    // Every entry: owned by root, with the expected mode, nothing else.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let mut entries = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "dpkg-deb -c line: {line}");
        assert_eq!(f[1], "root/root", "{line}");
        let path = f[5].trim_start_matches('.').trim_end_matches('/');
        entries.insert(path.to_owned(), f[0].to_owned());
    }
    let files = [
        ("/usr/bin/ckpt", "-rwxr-xr-x"),
        ("/usr/lib/ckpt/libckpt.so", "-rw-r--r--"),
        ("/usr/lib/ckpt/spank_ckpt.so", "-rw-r--r--"),
        ("/usr/share/man/man1/ckpt.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man8/ckpt_spank.8.gz", "-rw-r--r--"),
        ("/usr/share/doc/ckpt/README.md", "-rw-r--r--"),
        ("/usr/share/doc/ckpt/copyright", "-rw-r--r--"),
        ("/usr/share/doc/ckpt/changelog.gz", "-rw-r--r--"),
        ("/usr/share/doc/ckpt/plugstack.conf.example", "-rw-r--r--"),
    ];
    for (path, mode) in files {
        assert_eq!(
            entries.get(path).map(String::as_str),
            Some(mode),
            "{path}\n{listing}"
        );
    }
    for (path, mode) in &entries {
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{path}\n{listing}");
        } else {
            assert!(
                files.iter().any(|(p, _)| p == path),
                "unexpected file {path} in the package\n{listing}"
            );
        }
    }

    // The control fields, as `dpkg-deb -I` shows them.
    let info = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} field in dpkg-deb -I:\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "ckpt");
    assert_eq!(field("Version"), VERSION);
    assert_eq!(field("Architecture"), "amd64");
    assert!(field("Maintainer").contains('@'), "{info}");
    assert!(field("Installed-Size").parse::<u64>().is_ok(), "{info}");
    assert!(
        field("Description").starts_with("transparent checkpoint/restart"),
        "{info}"
    );
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>= 2."), "{depends}");
    // The Slurm release the plugin was built for: at least it, below the next.
    let slurm = depends
        .split(", ")
        .filter_map(|d| d.strip_prefix("slurm-wlm-basic-plugins ("))
        .collect::<Vec<_>>();
    assert_eq!(slurm.len(), 2, "{depends}");
    let release = slurm[0]
        .strip_prefix(">= ")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{depends}"));
    assert!(slurm[1].starts_with("<< "), "{depends}");
    assert!(
        info.contains(&format!("built for Slurm {release}")),
        "the description names the Slurm release {release}:\n{info}"
    );

    // The files themselves.
    let root = out.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let v = text(&run(
        Command::new(root.join("usr/bin/ckpt")).arg("--version")
    ));
    assert_eq!(v.trim(), format!("ckpt {VERSION}"));
    let example = std::fs::read_to_string(root.join("usr/share/doc/ckpt/plugstack.conf.example"))
        .expect("plugstack.conf.example");
    let line = example
        .lines()
        .find(|l| l.starts_with("optional "))
        .unwrap_or_else(|| panic!("no plugstack line:\n{example}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[1], "/usr/lib/ckpt/spank_ckpt.so", "{line}");
    assert!(
        words.contains(&"libckpt=/usr/lib/ckpt/libckpt.so"),
        "{line}"
    );
    assert!(words.contains(&"ckpt=/usr/bin/ckpt"), "{line}");
    // The man pages: gzip, this version, no groff warnings.
    for page in [
        "usr/share/man/man1/ckpt.1.gz",
        "usr/share/man/man8/ckpt_spank.8.gz",
    ] {
        let roff = text(&run(Command::new("gzip").arg("-dc").arg(root.join(page))));
        assert!(
            roff.lines()
                .find(|l| l.starts_with(".TH"))
                .is_some_and(|l| l.contains(&format!("\"ckpt {VERSION}\""))),
            "{page}: .TH with the version"
        );
        if prerequisite(have("groff"), "groff (groff-base)") {
            let path = out.join("page");
            std::fs::write(&path, &roff).expect("write page");
            let o = run(Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path));
            assert_eq!(
                String::from_utf8_lossy(&o.stderr),
                "",
                "{page}: groff warnings"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_rpm_spec_parses() {
    if !prerequisite(have("rpmspec"), "rpmspec (Debian: apt-get install rpm)") {
        return;
    }
    let out = scratch("spec");
    let o = run(Command::new(repo().join("scripts/package.sh"))
        .arg("rpm-spec")
        .env("CKPT_PACKAGE_OUT", &out));
    assert!(text(&o).contains("parses"), "{}", text(&o));
    let spec = text(&run(Command::new("rpmspec")
        .arg("-P")
        .arg(repo().join("packaging/ckpt.spec"))));
    for want in [
        "/usr/bin/ckpt",
        "/usr/lib/ckpt/libckpt.so",
        "/usr/lib/ckpt/spank_ckpt.so",
        "/usr/share/man/man1/ckpt.1*",
        "/usr/share/man/man8/ckpt_spank.8*",
        "BuildRequires:  slurm-devel",
    ] {
        assert!(spec.contains(want), "{want} in the parsed spec:\n{spec}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
