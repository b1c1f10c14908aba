#!/usr/bin/env bash
# package.sh [deb|rpm-spec|rpm|all] - the packages admins install.
#
#   deb       target/package/ckpt_<version>_amd64.deb, built with dpkg-deb
#             (no cargo-deb):
#               /usr/bin/ckpt                      the ckpt command
#               /usr/lib/ckpt/libckpt.so           the preload library
#               /usr/lib/ckpt/spank_ckpt.so        the Slurm SPANK plugin
#               /usr/share/man/man1/ckpt.1.gz, /usr/share/man/man8/ckpt_spank.8.gz
#               /usr/share/doc/ckpt/{README.md,copyright,changelog.gz,
#                                    plugstack.conf.example}
#             The plugin's defaults (libckpt=, ckpt=) are those of
#             scripts/install.sh (/usr/local): the plugstack.conf line of
#             the package names its paths, see
#             /usr/share/doc/ckpt/plugstack.conf.example.
#   rpm-spec  checks that packaging/ckpt.spec parses (rpmspec -P).
#   rpm       target/package/ckpt-<version>-1.x86_64.rpm from the same built
#             files (rpmbuild -bb with the spec's prebuilt mode); the spec
#             itself builds from the source tarball with cargo on RHEL.
#   all       (default) deb, rpm-spec, and rpm when rpmbuild is installed.
#
# The binaries are built first (cargo build --release, a no-op when up to
# date; CARGO_TARGET_DIR is honoured). Environment:
#   CKPT_PACKAGE_FROM=DIR  take ckpt, libckpt.so and libspank_ckpt.so from
#                          DIR and do not build (the package test uses this)
#   CKPT_PACKAGE_OUT=DIR   where the packages go (default target/package)
#   CKPT_MAINTAINER        Maintainer field (default: DEBFULLNAME <DEBEMAIL>,
#                          else "ckpt maintainers <ckpt-maintainers@example.org>")
# Runs as any user: dpkg-deb --root-owner-group makes every file root's.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin
REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${CKPT_PACKAGE_OUT:-$TARGET/package}
WHAT=${1:-all}

die() { echo "package.sh: $*" >&2; exit 1; }
# Scratch directories, removed at exit.
SCRATCH=()
trap 'rm -rf "${SCRATCH[@]}"' EXIT
# scratch NAME: a new scratch directory in $SCRATCH_DIR.
scratch() { mkdir -p "$OUT"; SCRATCH_DIR=$(mktemp -d "$OUT/.$1.XXXXXX"); SCRATCH+=("$SCRATCH_DIR"); }
case "$WHAT" in
  deb|rpm-spec|rpm|all) ;;
  -h|--help|help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [deb|rpm-spec|rpm|all]" >&2; exit 2 ;;
esac

# The workspace version ([workspace.package] version = "X.Y.Z").
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$REPO/Cargo.toml")
[ -n "$VERSION" ] || die "no [workspace.package] version in $REPO/Cargo.toml"
MAINTAINER=${CKPT_MAINTAINER:-"${DEBFULLNAME:-ckpt maintainers} <${DEBEMAIL:-ckpt-maintainers@example.org}>"}

# The built files.
if [ -n "${CKPT_PACKAGE_FROM:-}" ]; then
  BIN=$(cd "$CKPT_PACKAGE_FROM" && pwd) || die "CKPT_PACKAGE_FROM=$CKPT_PACKAGE_FROM: no such directory"
else
  BIN=$TARGET/release
  if [ "$WHAT" != rpm-spec ]; then
    (cd "$REPO" && cargo build --release -p spank-plugin -p ckpt-core -p ckpt-restart)
  fi
fi
need_built() {
  local f
  for f in ckpt libckpt.so libspank_ckpt.so; do
    [ -f "$BIN/$f" ] || die "$BIN/$f was not built (cargo build --release --workspace)"
  done
}

# The Slurm major.minor the plugin was built for: its exported
# plugin_version (0xMMmm00), which slurmd compares with its own.
slurm_release() {
  local addr word
  addr=$(nm -D --defined-only "$BIN/libspank_ckpt.so" | awk '$3 == "plugin_version" {print $1}')
  [ -n "$addr" ] || die "$BIN/libspank_ckpt.so exports no plugin_version"
  # One little-endian 32-bit word of .rodata.
  word=$(objdump -s -j .rodata --start-address="0x$addr" --stop-address="$(printf '0x%x' $((0x$addr + 4)))" \
           "$BIN/libspank_ckpt.so" | awk '$1 ~ /^[0-9a-f]+$/ && length($2) == 8 {print $2; exit}')
  [ ${#word} = 8 ] || die "cannot read plugin_version from $BIN/libspank_ckpt.so"
  local le=${word:6:2}${word:4:2}${word:2:2}${word:0:2}
  printf '%d.%02d %d.%02d\n' $((0x$le >> 16 & 255)) $((0x$le >> 8 & 255)) \
                            $((0x$le >> 16 & 255)) $(((0x$le >> 8 & 255) + 1))
}

# The package's copy of plugstack.conf.example: its `optional` line names
# the package's paths (the plugin's defaults are /usr/local).
plugstack_example() {
  {
    sed -n '1p' "$REPO/plugstack.conf.example"
    cat <<'NOTE'
#
# This copy comes with the ckpt package, whose files are /usr/bin/ckpt and
# /usr/lib/ckpt/{libckpt.so,spank_ckpt.so}: the line below names them with
# libckpt= and ckpt= (the defaults below are those of scripts/install.sh).
# Debian's plugstack.conf includes /etc/slurm/plugstack.conf.d/*.conf: copy
# this file to /etc/slurm/plugstack.conf.d/ckpt.conf and edit the line.
NOTE
    sed -e '1d' -e '/^optional /{s#/usr/local/lib/ckpt/#/usr/lib/ckpt/#g; s#/usr/local/bin/ckpt#/usr/bin/ckpt#g}' \
        "$REPO/plugstack.conf.example"
  } >"$1"
  grep -q '^optional /usr/lib/ckpt/spank_ckpt\.so .*libckpt=/usr/lib/ckpt/libckpt\.so' "$1" &&
    grep -q '^optional .* ckpt=/usr/bin/ckpt\b' "$1" ||
    die "plugstack.conf.example: its optional line must name libckpt= and ckpt= (for the package's paths)"
}

# A man page with the version of this build on its .TH line.
man_page() { sed "1,/^\.TH/s/\"ckpt [0-9][^\"]*\"/\"ckpt $VERSION\"/" "$1"; }

build_deb() {
  need_built
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
  local work root deb arch=amd64 slurm_mm slurm_next depends
  read -r slurm_mm slurm_next < <(slurm_release)
  mkdir -p "$OUT"
  scratch deb; work=$SCRATCH_DIR
  root=$work/debian/ckpt
  install -d -m 0755 "$root"/DEBIAN "$root"/usr/bin "$root"/usr/lib/ckpt \
    "$root"/usr/share/man/man1 "$root"/usr/share/man/man8 "$root"/usr/share/doc/ckpt

  # Stripped as dh_strip does (.eh_frame stays: ckpt unwinds panics).
  install -m 0755 "$BIN/ckpt" "$root/usr/bin/ckpt"
  install -m 0644 "$BIN/libckpt.so" "$root/usr/lib/ckpt/libckpt.so"
  install -m 0644 "$BIN/libspank_ckpt.so" "$root/usr/lib/ckpt/spank_ckpt.so"
  strip --remove-section=.comment --remove-section=.note "$root/usr/bin/ckpt"
  strip --remove-section=.comment --remove-section=.note --strip-unneeded \
    "$root/usr/lib/ckpt/libckpt.so" "$root/usr/lib/ckpt/spank_ckpt.so"

  man_page "$REPO/docs/man/ckpt.1" | gzip -9n >"$root/usr/share/man/man1/ckpt.1.gz"
  man_page "$REPO/docs/man/ckpt_spank.8" | gzip -9n >"$root/usr/share/man/man8/ckpt_spank.8.gz"
  install -m 0644 "$REPO/README.md" "$root/usr/share/doc/ckpt/README.md"
  install -m 0644 "$REPO/packaging/debian/copyright" "$root/usr/share/doc/ckpt/copyright"
  plugstack_example "$root/usr/share/doc/ckpt/plugstack.conf.example"
  local commit
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  printf 'ckpt (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
    "$VERSION" "$commit" "$MAINTAINER" "$(date -R)" | gzip -9n >"$root/usr/share/doc/ckpt/changelog.gz"
  chmod 0644 "$root"/usr/share/man/man*/*.gz "$root"/usr/share/doc/ckpt/*

  # Depends: the shared libraries the binaries need (dpkg-shlibdeps, from
  # dpkg-dev; else the newest GLIBC_ symbol version they use), and the
  # Slurm release the plugin was built for.
  if command -v dpkg-shlibdeps >/dev/null; then
    printf 'Source: ckpt\n\nPackage: ckpt\nArchitecture: %s\n' "$arch" >"$work/debian/control"
    depends=$(cd "$work" && dpkg-shlibdeps -O -e"$root/usr/bin/ckpt" -e"$root/usr/lib/ckpt/libckpt.so" \
                -e"$root/usr/lib/ckpt/spank_ckpt.so" | sed -n 's/^shlibs:Depends=//p')
    rm -f "$work/debian/control"
  else
    local glibc
    glibc=$(objdump -T "$root/usr/bin/ckpt" "$root"/usr/lib/ckpt/*.so | grep -o 'GLIBC_[0-9.]*' |
              sed 's/GLIBC_//' | sort -uV | tail -n 1)
    depends="libc6 (>= $glibc), libgcc-s1"
  fi
  [ -n "$depends" ] || die "could not work out the shared library dependencies"
  depends="$depends, slurm-wlm-basic-plugins (>= $slurm_mm), slurm-wlm-basic-plugins (<< $slurm_next)"

  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat >"$root/DEBIAN/control" <<CONTROL
Package: ckpt
Version: $VERSION
Architecture: $arch
Maintainer: $MAINTAINER
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Description: transparent checkpoint/restart for Slurm jobs
 ckpt saves the state of a running job's processes (memory, threads, files,
 pipes, signals) into a checkpoint directory and restarts them from there
 after a requeue, a preemption or a node failure, without changes to the
 program and without root. Users add one option to sbatch or srun
 (--checkpoint-dir, --checkpoint-interval); a SPANK plugin does the rest.
 .
 This package contains the ckpt command, the preload library
 (/usr/lib/ckpt/libckpt.so) and the SPANK plugin
 (/usr/lib/ckpt/spank_ckpt.so), built for Slurm $slurm_mm: Slurm refuses a
 plugin built for another release. Enable it with the line in
 /usr/share/doc/ckpt/plugstack.conf.example on every node and submit host,
 and run "ckpt check" on each node.
CONTROL
  chmod 0644 "$root/DEBIAN/control"
  find "$root" -type d -exec chmod 0755 {} +

  deb=$OUT/ckpt_${VERSION}_${arch}.deb
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb.tmp" >/dev/null
  mv -f "$deb.tmp" "$deb"
  echo "built $deb (Depends: $depends)"
}

check_spec() {
  command -v rpmspec >/dev/null || die "rpmspec not found (Debian: apt-get install rpm)"
  local parsed
  parsed=$(rpmspec -P "$REPO/packaging/ckpt.spec") || die "packaging/ckpt.spec does not parse"
  grep -q "^Version: *$VERSION\$" <<<"$parsed" ||
    die "packaging/ckpt.spec: Version is not $VERSION (the Cargo.toml workspace version)"
  echo "packaging/ckpt.spec parses (rpmspec -P): $(grep -E '^(Name|Version|Release):' <<<"$parsed" | tr -s ' ' | tr '\n' ' ')"
}

build_rpm() {
  need_built
  command -v rpmbuild >/dev/null || die "rpmbuild not found (Debian: apt-get install rpm)"
  local slurm_mm slurm_next top rpm
  read -r slurm_mm slurm_next < <(slurm_release)
  mkdir -p "$OUT"
  scratch rpm; top=$SCRATCH_DIR
  # --nodeps: the BuildRequires (cargo, slurm-devel, ...) are for building
  # from source; here the binaries exist already.
  rpmbuild -bb --nodeps --quiet \
    --define "_topdir $top" \
    --define "ckpt_prebuilt $BIN" \
    --define "ckpt_srcdir $REPO" \
    --define "slurm_mm $slurm_mm" \
    --define "slurm_next $slurm_next" \
    "$REPO/packaging/ckpt.spec" >"$top/log" 2>&1 || { cat "$top/log" >&2; die "rpmbuild failed"; }
  rpm=$(find "$top/RPMS" -name 'ckpt-*.rpm' | head -n 1)
  [ -n "$rpm" ] || die "rpmbuild made no rpm"
  mv -f "$rpm" "$OUT/"
  echo "built $OUT/$(basename "$rpm")"
}

case "$WHAT" in
  deb) build_deb ;;
  rpm-spec) check_spec ;;
  rpm) check_spec; build_rpm ;;
  all)
    build_deb
    check_spec
    if command -v rpmbuild >/dev/null; then build_rpm; else echo "no rpmbuild: rpm skipped (apt-get install rpm)"; fi
    ;;
esac
