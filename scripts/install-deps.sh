#!/usr/bin/env bash
# install-deps.sh - install everything ckpt needs to build and test on Debian 12:
# Slurm (slurmctld, slurmd, client, headers), munge, libclang for bindgen, a C
# compiler, the interpreters the C/R tests run (python3, R, tmux), and QEMU, Debian's
# 6.1 kernel and virtme-ng for the C/R tests in a 6.1 guest.
# Idempotent; apt-get runs only when something is missing (then it must run
# as root).
# Builds Slurm 25.11 from vendor/ into /opt/slurm-25.11 when it is not there.
# Also checks that a Rust toolchain (cargo >= 1.88: edition 2024, naked functions) is on PATH,
# and installs one with rustup when there is none.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH:$HOME/.cargo/bin

PACKAGES=(slurmctld slurmd slurm-client munge libslurm-dev libclang-dev clang gcc libc6-dev
          python3 python3-numpy python3-h5py gfortran r-base-core tmux procps ca-certificates curl)
# scripts/package.sh and its test: dpkg-shlibdeps, groff (man page checks), rpmspec/rpmbuild.
PACKAGES+=(dpkg-dev groff-base rpm)
# The Node.js program of the C/R suite (libuv: epoll, eventfd, a thread pool).
PACKAGES+=(nodejs)
# The MPI program of the C/R suite and the MPI Slurm tests (Open MPI 4.1, with PMIx).
PACKAGES+=(openmpi-bin libopenmpi-dev)
# MPICH 4.0 (ch4 over UCX) as the second MPI of the C/R suite; Open MPI stays the
# default `mpicc`/`mpirun` (alternatives priority 50 against 40).
PACKAGES+=(mpich libmpich-dev)
# The Java program of the C/R suite (a java.nio Selector; OpenJDK uses signal 62 itself).
PACKAGES+=(default-jdk-headless)
# Building Slurm 25.11 from vendor/ (below).
PACKAGES+=(libmunge-dev make)
# ... with its PMIx plugin (srun --mpi=pmix), against Debian's PMIx 4.2, as Debian's 22.05 has.
PACKAGES+=(libpmix-dev)
# The C/R tests on Debian 12's own kernel, Linux 6.1, booted under QEMU by virtme-ng
# (tests/kernel-6-1): QEMU, the kernel (the generic flavour: -cloud-amd64 has no 9p),
# busybox for virtme-ng's initramfs, and venv for virtme-ng itself (below).
PACKAGES+=(qemu-system-x86 linux-image-amd64 busybox-static python3-venv)

log() { echo "[install-deps] $*" >&2; }
die() { log "error: $*"; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run as root to install them (e.g. sudo $0)"
  log "installing: ${missing[*]}"
  # policy-rc.d exiting 101 keeps postinst scripts from starting munge and
  # the Slurm daemons (the test harness and the demo start their own).
  created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; created=1
  fi
  rc=0
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } || rc=$?
  [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "no cargo on PATH: installing the stable Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
      --component clippy,rustfmt || die "rustup install failed: install Rust >= 1.88 by hand"
  log "installed; add \$HOME/.cargo/bin to PATH (source \$HOME/.cargo/env)"
fi
version=$(cargo --version | awk '{print $2}')
major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}
if [ "$major" -lt 1 ] || { [ "$major" = 1 ] && [ "$minor" -lt 88 ]; }; then
  die "cargo $version is too old: ckpt needs Rust >= 1.88 (edition 2024, naked functions); run rustup update"
fi
# Slurm 25.11 from vendor/ (the Slurm tests also run against it: the
# `slurm-25-11` test target). About 3 minutes on 2 cores, once.
SLURM_25_11_HOME=${CKPT_SLURM_25_11_HOME:-/opt/slurm-25.11}
SLURM_25_11_TARBALL=$(cd "$(dirname "$0")/.." && pwd)/vendor/slurm-25.11.7.tar.gz
SLURM_25_11_SHA256=fde046ae991d17cd27f53732b6f3544a2980ff6faadd2fde540c87783ad03bef
# --enable-multiple-slurmd: the test cluster runs several slurmd on one
# machine (virtual nodes n1-n3); without it, the second node refuses a job
# credential the first one already decoded (munge replay protection) and a
# multi-node step fails to launch. Debian's 22.05 packages have it.
SLURM_25_11_CONFIGURE="--prefix=$SLURM_25_11_HOME --sysconfdir=$SLURM_25_11_HOME/etc --disable-debug --enable-multiple-slurmd --with-pmix=/usr/lib/x86_64-linux-gnu/pmix2"
SLURM_25_11_STAMP=$SLURM_25_11_HOME/.ckpt-configure
if [ ! -x "$SLURM_25_11_HOME/sbin/slurmctld" ] || [ ! -f "$SLURM_25_11_HOME/include/slurm/spank.h" ] ||
   [ "$(cat "$SLURM_25_11_STAMP" 2>/dev/null)" != "$SLURM_25_11_CONFIGURE" ]; then
  [ "$(id -u)" = 0 ] || die "Slurm 25.11 is not installed in $SLURM_25_11_HOME; run as root to build it"
  echo "$SLURM_25_11_SHA256  $SLURM_25_11_TARBALL" | sha256sum -c --quiet - ||
    die "$SLURM_25_11_TARBALL does not have the expected sha256"
  build=$(mktemp -d /var/tmp/slurm-25.11-build.XXXXXX)
  log "building Slurm 25.11 into $SLURM_25_11_HOME (log: $build/build.log)"
  tar -C "$build" -xzf "$SLURM_25_11_TARBALL"
  ( cd "$build"/slurm-25.11.7 &&
    # shellcheck disable=SC2086 # the flags are words
    ./configure $SLURM_25_11_CONFIGURE &&
    make -j"$(nproc)" && make install ) >"$build/build.log" 2>&1 ||
    { tail -n 30 "$build/build.log" >&2; die "building Slurm 25.11 failed (log: $build/build.log)"; }
  echo "$SLURM_25_11_CONFIGURE" >"$SLURM_25_11_STAMP"
  rm -rf "$build"
fi

# virtme-ng (only on PyPI) in its own venv of Debian's python3 (Debian's pip refuses
# to install into the system), its commands linked into /usr/local/bin.
VNG_VENV=/opt/virtme-ng
VNG_VERSION=1.42
if [ "$("$VNG_VENV/bin/vng" --version 2>/dev/null)" != "virtme-ng $VNG_VERSION" ]; then
  [ "$(id -u)" = 0 ] || die "virtme-ng $VNG_VERSION is not installed in $VNG_VENV; run as root to install it"
  log "installing virtme-ng $VNG_VERSION into $VNG_VENV"
  rm -rf "$VNG_VENV"
  { /usr/bin/python3 -m venv "$VNG_VENV" &&
    "$VNG_VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"; } ||
    die "installing virtme-ng $VNG_VERSION from PyPI into $VNG_VENV failed"
fi
for cmd in vng virtme-ng virtme-run; do
  if [ "$(readlink "/usr/local/bin/$cmd" 2>/dev/null)" != "$VNG_VENV/bin/$cmd" ]; then
    [ "$(id -u)" = 0 ] || die "/usr/local/bin/$cmd does not point into $VNG_VENV; run as root to link it"
    ln -sf "$VNG_VENV/bin/$cmd" "/usr/local/bin/$cmd"
  fi
done

log "ok: packages installed, Slurm 25.11 in $SLURM_25_11_HOME, virtme-ng $VNG_VERSION, cargo $version"
