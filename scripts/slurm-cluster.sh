#!/usr/bin/env bash
# slurm-cluster.sh - a throw-away Slurm cluster (munged, slurmctld, slurmd) on
# this machine, without systemd. Used by scripts/demo.sh and by the Slurm tests
# (tests/harness/slurm.rs). Must run as root.
#
# Nodes: this machine ($(uname -n), partitions `debug` and `high`), and three
# virtual nodes n1, n2, n3 in partition `multi`: three more slurmd on this
# machine, each started with `-N nK` on a port of its own (17001-17003), for
# multi-node jobs and restarts on other nodes (docs/batch-jobs.md). Each
# virtual slurmd runs in a mount namespace of its own with a private
# PMIxCliTmpDirBase (mpi.conf), so `srun --mpi=pmix` steps span them
# (docs/mpi.md).
#
#   slurm-cluster.sh start   (re)start the daemons with a fresh, empty state
#   slurm-cluster.sh stop    cancel jobs, stop slurmd, slurmctld, munged
#   slurm-cluster.sh env     print the export line for SLURM_CONF
#
# Environment:
#   CKPT_SLURM_PREFIX     conf, state, spool, logs, pids (default /var/tmp/ckpt-slurm)
#   CKPT_SLURM_PLUGSTACK  plugstack.conf to use (default $PREFIX/etc/plugstack.conf,
#                         created empty when missing)
#   CKPT_SLURM_USER       unprivileged user to create (default slurmtest; empty: none)
#   CKPT_SLURM_TASK_PROLOG  TaskProlog= of the generated slurm.conf (default: none)
#   CKPT_SLURM_INSTALL=0  never apt-get install missing packages (fail instead)
#   CKPT_SLURM_KEEP_MUNGE=1  `stop` leaves munged running
#   CKPT_SLURM_HOME       a Slurm installed from source (its bin/ and sbin/ are
#                         used, e.g. /opt/slurm-25.11); default: Debian's packages
#
# Fixed ports (6817/6818): one such cluster per machine. The generated
# slurm.conf also becomes /etc/slurm/slurm.conf when that is missing or a
# symlink, so that plain `srun`/`sbatch` find it.
set -euo pipefail
SLURM_HOME=${CKPT_SLURM_HOME:-}
if [ -n "$SLURM_HOME" ]; then
  SBIN=$SLURM_HOME/sbin
  [ -x "$SBIN/slurmctld" ] || { echo "[slurm-cluster] error: no $SBIN/slurmctld (CKPT_SLURM_HOME=$SLURM_HOME)" >&2; exit 1; }
  export PATH=$SBIN:$SLURM_HOME/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
else
  SBIN=/usr/sbin
  export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
fi

PREFIX=${CKPT_SLURM_PREFIX:-/var/tmp/ckpt-slurm}
CONF=$PREFIX/etc/slurm.conf
PLUGSTACK=${CKPT_SLURM_PLUGSTACK:-$PREFIX/etc/plugstack.conf}
TEST_USER=${CKPT_SLURM_USER-slurmtest}
NODE=$(uname -n | cut -d. -f1)
VNODES="n1 n2 n3"
if [ -n "$SLURM_HOME" ]; then PACKAGES="munge"; else PACKAGES="slurmctld slurmd slurm-client munge"; fi

log() { echo "[slurm-cluster] $*" >&2; }
die() {
  log "error: $*"
  for f in "$PREFIX"/log/slurmctld.log "$PREFIX"/log/slurmd.log /var/log/munge/munged.log; do
    [ -s "$f" ] && { log "--- last lines of $f"; tail -n 25 "$f" >&2; }
  done
  exit 1
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s until COMMAND succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

install_packages() {
  local missing="" p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  [ "${CKPT_SLURM_INSTALL:-1}" = 1 ] || die "missing packages:$missing (CKPT_SLURM_INSTALL=0)"
  log "installing:$missing"
  # policy-rc.d exiting 101 keeps the packages' postinst from starting services.
  local created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; created=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } || rc=$?
  [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install$missing failed"
}

# pid_of PIDFILE EXE: the pid in PIDFILE if that process is alive and runs EXE.
pid_of() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$2")" ] && echo "$pid"
  return 0
}
# stop_pids PID...: TERM, wait up to 5 s, then KILL.
stop_pids() {
  local p any
  [ $# = 0 ] && return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    any=0; for p in "$@"; do [ -d "/proc/$p" ] && any=1; done
    [ $any = 0 ] && return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  munge_ok && return 0
  # A stale pid file or socket of a dead munged makes it refuse to start.
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 "munged (see /var/log/munge/munged.log)" munge_ok
}

write_conf() {
  mkdir -p "$PREFIX"/{etc,state,spool,log,run}
  chmod 0755 "$PREFIX" "$PREFIX"/{etc,spool,log,run}
  chmod 0700 "$PREFIX/state"
  [ -e "$PLUGSTACK" ] || : >"$PLUGSTACK"
  cat >"$CONF.new" <<CONF
# generated by scripts/slurm-cluster.sh
ClusterName=ckpt
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also the delay before a requeued job may start again (min 5 s)
AuthInfo=cred_expire=5
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool/%n
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd-%n.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
# this machine's own node logs to slurmd.log (slurmd -L), the virtual ones here
SlurmdLogFile=$PREFIX/log/slurmd-%n.log
# the virtual nodes declare CPUs this machine does not have
SlurmdParameters=config_overrides
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$PLUGSTACK
${CKPT_SLURM_TASK_PROLOG:+TaskProlog=$CKPT_SLURM_TASK_PROLOG}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$PREFIX/log/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
ReturnToService=2
MinJobAge=2
KillWait=2
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=10
SlurmdTimeout=30
MessageTimeout=10
# partition-priority preemption: jobs of 'high' requeue jobs of 'debug'
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
$(for n in $VNODES; do echo "NodeName=$n NodeAddr=127.0.0.1 Port=$((17000 + ${n#n})) CPUs=2 RealMemory=1000 State=UNKNOWN"; done)
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=5
PartitionName=high  Nodes=$NODE Default=NO  MaxTime=INFINITE State=UP PriorityTier=10
PartitionName=multi Nodes=$(echo $VNODES | tr ' ' ,) Default=NO MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=5
CONF
  chmod 0644 "$CONF.new"; mv "$CONF.new" "$CONF"
  # Slurm's PMIx plugin (srun --mpi=pmix) makes its per-step directory
  # under the same path on every node: each virtual node gets a private
  # directory mounted there (start_vnode), or their steps collide.
  mkdir -p "$PREFIX/pmix"
  chmod 0755 "$PREFIX/pmix"
  printf '# generated by scripts/slurm-cluster.sh\nPMIxCliTmpDirBase=%s\n' "$PREFIX/pmix" >"$(dirname "$CONF")/mpi.conf"
  chmod 0644 "$(dirname "$CONF")/mpi.conf"
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  fi
}

# A virtual node's slurmd, in a mount namespace of its own where
# $PREFIX/pmix is that node's own directory (what a real node has by being
# another machine): the steps it starts inherit it.
start_vnode() {
  local n=$1
  mkdir -p "$PREFIX/pmix.$n"
  chmod 0755 "$PREFIX/pmix.$n"
  unshare -m --propagation private sh -c \
    'mount --bind "$1" "$2" && exec "$3" -f "$4" -N "$5"' sh \
    "$PREFIX/pmix.$n" "$PREFIX/pmix" "$SBIN/slurmd" "$CONF" "$n"
}

node_ready() {
  case "$(sinfo -h -n "$1" -o %t 2>/dev/null | head -n 1)" in idle|mix|alloc) return 0 ;; esac
  return 1
}

stop_cluster() {
  export SLURM_CONF=$CONF
  local ctld sd jobs steps
  ctld=$(pid_of "$PREFIX/run/slurmctld.pid" "$SBIN/slurmctld")
  local n; sd=""
  for n in "$NODE" $VNODES; do sd="$sd $(pid_of "$PREFIX/run/slurmd-$n.pid" "$SBIN/slurmd")"; done
  # (a cluster started before the virtual nodes existed)
  sd="$sd $(pid_of "$PREFIX/run/slurmd.pid" "$SBIN/slurmd")"
  if [ -n "$ctld" ]; then
    jobs=$(timeout 5 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      scancel --signal=KILL $jobs 2>/dev/null || true
      for _ in $(seq 50); do
        [ -z "$(timeout 5 squeue -h -t R,CG,S -o %i 2>/dev/null)" ] && break; sleep 0.2
      done
    fi
  fi
  stop_pids $sd
  stop_pids $ctld
  # slurmstepd's outlive slurmd by design: stop those of our slurmd.
  steps=$(for d in /proc/[0-9]*; do
            if [ "$(readlink "$d/exe" 2>/dev/null)" = "$(readlink -f "$SBIN/slurmstepd")" ]; then echo "${d#/proc/}"; fi
          done)
  stop_pids $steps
  if [ "${CKPT_SLURM_KEEP_MUNGE:-0}" != 1 ]; then
    stop_pids $(pid_of /run/munge/munged.pid /usr/sbin/munged)
  fi
  return 0
}

start_cluster() {
  install_packages
  if [ -n "$TEST_USER" ] && ! id "$TEST_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$TEST_USER"
    log "created user $TEST_USER"
  fi
  CKPT_SLURM_KEEP_MUNGE=1 stop_cluster
  # The ports are fixed: a cluster of another prefix or release must be
  # stopped first.
  local d others=""
  for d in /proc/[0-9]*; do
    case "$(readlink "$d/exe" 2>/dev/null)" in
      */slurmctld|*/slurmd) others="$others ${d#/proc/}" ;;
    esac
  done
  [ -z "$others" ] || die "Slurm daemons of another cluster are running (pids:$others): stop them first, e.g. CKPT_SLURM_PREFIX=<its prefix> $0 stop"
  start_munge
  write_conf
  export SLURM_CONF=$CONF
  rm -rf "${PREFIX:?}"/state/* "${PREFIX:?}"/spool/*
  # Fresh logs too: what they say is about this start.
  : >"$PREFIX/log/slurmctld.log"; : >"$PREFIX/log/slurmd.log"
  local n
  for n in $VNODES; do : >"$PREFIX/log/slurmd-$n.log"; mkdir -p "$PREFIX/spool/$n"; done
  mkdir -p "$PREFIX/spool/$NODE"
  "$SBIN/slurmctld" -c -f "$CONF" || die "slurmctld did not start"
  wait_for 30 "slurmctld to answer" bash -c 'scontrol ping | grep -q "is UP"'
  "$SBIN/slurmd" -f "$CONF" -N "$NODE" -L "$PREFIX/log/slurmd.log" || die "slurmd did not start"
  for n in $VNODES; do start_vnode "$n" || die "slurmd -N $n did not start"; done
  wait_for 60 "node $NODE to become idle" node_ready "$NODE"
  for n in $VNODES; do wait_for 60 "virtual node $n to become idle" node_ready "$n"; done
  timeout 60 srun -Q -J cluster-probe -t 1 true || die "probe 'srun true' failed"
  log "ready: node $NODE, virtual nodes $VNODES (partition multi), $(sinfo -V); export SLURM_CONF=$CONF${SLURM_HOME:+ PATH=$SLURM_HOME/bin:\$PATH}"
}

[ "$(id -u)" = 0 ] || die "must run as root"
case "${1:-}" in
  start) start_cluster ;;
  stop) stop_cluster; log "stopped" ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
