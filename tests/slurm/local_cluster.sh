#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost (Debian's slurm-wlm + munge), run a command
# against it, and stop every daemon this script started, by PID, even on failure.
#
#   tests/slurm/local_cluster.sh <command...>
#
# Needs root (apt-get install, daemons). Partitions "cpu" and "gpu" match the placeholders of
# workflow/profiles/slurm; the node advertises one fake GPU (gres File=/dev/null).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "local_cluster.sh: needs root" >&2
    exit 77
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "installing slurm-wlm and munge (Debian packages)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

NODE=$(hostname)
CPUS=$(nproc)
started=()
cleanup() {
    local rc=$?
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        if [ -f "$pidfile" ] && printf '%s\n' "${started[@]:-}" | grep -qx "$pidfile"; then
            pid=$(cat "$pidfile" 2>/dev/null || true)
            [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
    exit $rc
}
trap cleanup EXIT INT TERM

# munge
mkdir -p /run/munge && chown munge:munge /run/munge
[ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
if [ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    echo "munged already running; not restarting it" >&2
else
    runuser -u munge -- /usr/sbin/munged
    started+=(/run/munge/munged.pid)
fi
munge -n | unmunge >/dev/null

mkdir -p /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=localcluster
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MinJobAge=600
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=16000 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=${NODE} Name=gpu File=/dev/null
CONF

for d in slurmctld slurmd; do
    if [ -f /run/$d.pid ] && kill -0 "$(cat /run/$d.pid)" 2>/dev/null; then
        echo "$d already running; restarting it with this configuration" >&2
        kill "$(cat /run/$d.pid)"; sleep 1
    fi
done
/usr/sbin/slurmctld
started+=(/run/slurmctld.pid)
/usr/sbin/slurmd
started+=(/run/slurmd.pid)

for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1 || true)
    case "$state" in
        idle*|mix*|alloc*) break ;;
        drain*|down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
sinfo >&2

"$@"
