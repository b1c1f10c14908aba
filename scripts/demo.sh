#!/usr/bin/env bash
# demo.sh - from a fresh Debian 12 machine to a checkpointed Slurm job:
# installs the packages, builds the ckpt package (scripts/package.sh deb) and
# installs it with dpkg -i (/usr/bin/ckpt, /usr/lib/ckpt/), starts a local
# single-node Slurm cluster with the ckpt plugin, and runs a job as the
# unprivileged user slurmtest. Run as root:   sudo scripts/demo.sh
# Stop the cluster afterwards with:           sudo scripts/slurm-cluster.sh stop
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH:$HOME/.cargo/bin
REPO=$(cd "$(dirname "$0")/.." && pwd)
# Where the package puts the files (the plugstack line names them).
CKPT=/usr/bin/ckpt
LIBDIR=/usr/lib/ckpt
DEMO_USER=slurmtest
CLUSTER_PREFIX=${CKPT_SLURM_PREFIX:-/var/tmp/ckpt-slurm}
step() { printf '\n==> %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (sudo $0)" >&2; exit 1; }

step "installing packages (Slurm, munge, libclang, ...)"
"$REPO/scripts/install-deps.sh"

step "building the ckpt package and installing it (dpkg -i)"
built=$("$REPO/scripts/package.sh" deb)
echo "$built"
DEB=${built#built }; DEB=${DEB%% (*}
dpkg -i "$DEB" || { echo "demo.sh: dpkg -i $DEB failed (missing dependencies: apt-get -f install)" >&2; exit 1; }
dpkg -L ckpt | grep -E '/(bin|lib/ckpt)/|man[18]/' | sed 's/^/    /'

step "can this node run checkpointed jobs? (ckpt check)"
"$CKPT" check

step "starting a single-node Slurm cluster with the ckpt plugin"
mkdir -p "$CLUSTER_PREFIX/etc"
cat >"$CLUSTER_PREFIX/etc/plugstack.conf" <<CONF
optional $LIBDIR/spank_ckpt.so libckpt=$LIBDIR/libckpt.so ckpt=$CKPT default_interval=0 min_interval=10 signal=USR1
CONF
CKPT_SLURM_PREFIX=$CLUSTER_PREFIX CKPT_SLURM_USER=$DEMO_USER "$REPO/scripts/slurm-cluster.sh" start
export SLURM_CONF=$CLUSTER_PREFIX/etc/slurm.conf

step "the options, as users see them (sbatch --help)"
sbatch --help | sed -n '/--checkpoint /,/preemption)/p'

# Everything in the user's home is done as the user, never as root.
DEMO_DIR=/home/$DEMO_USER/ckpt-demo
as_user() { (cd / && runuser -u "$DEMO_USER" -- "$@"); }
as_user rm -rf "$DEMO_DIR"
as_user mkdir -p "$DEMO_DIR"
as_user tee "$DEMO_DIR/job.sh" >/dev/null <<'JOB'
#!/bin/bash
echo "job $SLURM_JOB_ID on $(hostname) as $(id -un)"
echo "LD_PRELOAD=$LD_PRELOAD"
env | grep '^CKPT_' | sort
ls -ld "$CKPT_DIR"
srun bash -c 'echo "step $SLURM_STEP_ID: CKPT_DIR=$CKPT_DIR"'
JOB
as_user chmod 0755 "$DEMO_DIR/job.sh"

step "a bad value is refused at submission (nothing is queued)"
(cd "$DEMO_DIR" && runuser -u "$DEMO_USER" -- env SLURM_CONF="$SLURM_CONF" \
   sbatch --checkpoint-interval=5x job.sh) || true

step "a checkpointed batch job: sbatch --checkpoint-dir=ckpt/%j --checkpoint-interval=5m"
(cd "$DEMO_DIR" && runuser -u "$DEMO_USER" -- env SLURM_CONF="$SLURM_CONF" \
   timeout 120 sbatch --wait -o demo-%j.out --checkpoint-dir=ckpt/%j --checkpoint-interval=5m job.sh)
as_user bash -c 'cat "$1"/demo-*.out' _ "$DEMO_DIR"

step "checkpoint -> requeue -> restart: a job with a two-line header"
as_user tee "$DEMO_DIR/count.py" >/dev/null <<'PY'
import time
total = 0
for i in range(1, 31):
    total += i * i
    print(f"tick {i} total {total}", flush=True)
    time.sleep(0.5)
print(f"finished: total {total} (an uninterrupted run also prints 9455)", flush=True)
PY
as_user tee "$DEMO_DIR/count.sh" >/dev/null <<'JOB'
#!/bin/bash
#SBATCH --checkpoint-dir=ckpt/%j --signal=B:USR1@60
python3 count.py
JOB
as_user chmod 0755 "$DEMO_DIR/count.sh"
cat "$DEMO_DIR/count.sh"
JOB_ID=$(cd "$DEMO_DIR" && runuser -u "$DEMO_USER" -- env SLURM_CONF="$SLURM_CONF" \
   sbatch --parsable -o count.out -e count.err count.sh)
echo "submitted job $JOB_ID; waiting for tick 8"
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "demo.sh: timed out waiting for $what" >&2; exit 1; }
    sleep 0.5
  done
}
wait_for 120 "tick 8" grep -qs '^tick 8 ' "$DEMO_DIR/count.out"
echo "sending the warning signal (what Slurm sends 60 s before the time limit, or at preemption):"
echo "    scancel --signal=USR1 --batch $JOB_ID"
as_user env SLURM_CONF="$SLURM_CONF" scancel --signal=USR1 --batch "$JOB_ID"
wait_for 120 "the requeued job to resume" grep -qs 'resuming from' "$DEMO_DIR/count.err"
echo "the job was checkpointed, requeued and resumed (its stderr):"
sed 's/^/    /' "$DEMO_DIR/count.err"
as_user env SLURM_CONF="$SLURM_CONF" "$CKPT" status --dir "$DEMO_DIR/ckpt/$JOB_ID/batch" | sed 's/^/    /'
wait_for 120 "the job to finish" bash -c "! squeue -h -j $JOB_ID 2>/dev/null | grep -q ."
echo "its output: every tick once, in order, and the uninterrupted result:"
sed 's/^/    /' "$DEMO_DIR/count.out"

step "done. The cluster is still running: export SLURM_CONF=$SLURM_CONF"
echo "    try: runuser -u $DEMO_USER -- srun --checkpoint-dir=/tmp/ck-%j env | grep CKPT_"
echo "    read: man ckpt; man 8 ckpt_spank"
echo "    stop it with: sudo CKPT_SLURM_PREFIX=$CLUSTER_PREFIX $REPO/scripts/slurm-cluster.sh stop"
