#!/usr/bin/env bash
# install-deps.sh - install everything ckpt needs to build and test on Debian 12:
# Slurm (slurmctld, slurmd, client, headers), munge, libclang for bindgen, a C
# compiler, and the interpreters the C/R tests run (python3, R, tmux).
# Idempotent; apt-get runs only when something is missing (then it must run
# as root).
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
log "ok: packages installed, cargo $version"
