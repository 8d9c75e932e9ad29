#!/usr/bin/env bash
# SLURM (multi-node GPUs): renders launch/slurm.sbatch.tmpl and submits it with sbatch; srun starts one
# process per node, and orchestra_jax.parallel.distributed joins them from the SLURM environment.
#
#   launch/slurm.sh --partition gpu --nodes 2 --gpus-per-node 8 --time 04:00:00 -- \
#       +experiment=quickstart mesh=gpu8 mesh.data=2
set -euo pipefail
# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: launch/slurm.sh [options] -- [hydra overrides...]
  --partition NAME     SLURM partition (or $SLURM_PARTITION)                       [required]
  --nodes N            nodes (one process each)                                    [required]
  --gpus-per-node N    GPUs per node (default: 8)
  --cpus-per-task N    CPU cores per process (default: 32)
  --time HH:MM:SS      wall-clock limit (default: 04:00:00): the job is killed, and billing stops, after it
  --account NAME       SLURM account to charge (or $SLURM_ACCOUNT)
  --job-name NAME      job name (default: orchestra)
  --workdir DIR        repository folder on the shared file system (default: this repository)
  --python PATH        interpreter with the package installed (default: <workdir>/.venv/bin/python)
  --entry SCRIPT       entry point (default: experiments/train.py)
  --log-dir DIR        folder for the job's stdout (default: <workdir>/runs/slurm)
  --max-restarts N     requeue a failed or preempted job up to N times (default: 3); each start resumes
  --signal-seconds N   SIGTERM this many seconds before the time limit, to save the step (default: 300)
  --dry-run            print the rendered batch script and the sbatch command instead of submitting
Hydra overrides after -- go unchanged to the entry point on every node. run_dir (default
<workdir>/runs/<job-name>) must be on the shared file system: every node saves into the same folder.
USAGE
}

PARTITION=${SLURM_PARTITION:-}
NODES=""
GPUS_PER_NODE=8
CPUS_PER_TASK=32
TIME_LIMIT=04:00:00
ACCOUNT=${SLURM_ACCOUNT:-}
JOB_NAME=orchestra
WORKDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=""
ENTRY=experiments/train.py
LOG_DIR=""
MAX_RESTARTS=3
SIGNAL_SECONDS=300
while [[ $# -gt 0 ]]; do
  case "$1" in
    --partition) PARTITION=${2:-}; shift 2 ;;
    --nodes) NODES=${2:-}; shift 2 ;;
    --gpus-per-node) GPUS_PER_NODE=${2:-}; shift 2 ;;
    --cpus-per-task) CPUS_PER_TASK=${2:-}; shift 2 ;;
    --time) TIME_LIMIT=${2:-}; shift 2 ;;
    --account) ACCOUNT=${2:-}; shift 2 ;;
    --job-name) JOB_NAME=${2:-}; shift 2 ;;
    --workdir) WORKDIR=${2:-}; shift 2 ;;
    --python) PYTHON=${2:-}; shift 2 ;;
    --entry) ENTRY=${2:-}; shift 2 ;;
    --log-dir) LOG_DIR=${2:-}; shift 2 ;;
    --max-restarts) MAX_RESTARTS=${2:-}; shift 2 ;;
    --signal-seconds) SIGNAL_SECONDS=${2:-}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1 (Hydra overrides go after --)" ;;
  esac
done
OVERRIDES=("$@")

require "$PARTITION" "SLURM partition" "--partition or SLURM_PARTITION"
require "$NODES" "number of nodes" "--nodes"
for pair in "nodes:$NODES" "gpus-per-node:$GPUS_PER_NODE" "cpus-per-task:$CPUS_PER_TASK" "signal-seconds:$SIGNAL_SECONDS"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer, got '$MAX_RESTARTS'"
[[ "$TIME_LIMIT" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] || die "--time '$TIME_LIMIT' is not a SLURM time (e.g. 04:00:00)"
PYTHON=${PYTHON:-$WORKDIR/.venv/bin/python}
LOG_DIR=${LOG_DIR:-$WORKDIR/runs/slurm}
RUN_DIR=$(override_value run_dir "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
if [[ -z "$RUN_DIR" ]]; then  # explicit and absolute: every requeued start must find the same checkpoints
  RUN_DIR="$WORKDIR/runs/$JOB_NAME"
  OVERRIDES=("run_dir=$RUN_DIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
fi
case "$RUN_DIR" in
  /tmp/*|/dev/shm/*|/var/tmp/*|/local/*|/scratch/local/*)
    die "run_dir=$RUN_DIR is node-local storage: use a folder on the shared file system (every node saves there, requeued starts resume from it)" ;;
esac
EXTRA_SBATCH=""
[[ -n "$ACCOUNT" ]] && EXTRA_SBATCH="#SBATCH --account=$ACCOUNT"
TRAIN_ARGS=$(quote_cmd "$ENTRY" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
WORKDIR_Q=$(quote_word "$WORKDIR")
PYTHON_Q=$(quote_word "$PYTHON")

RUN_DIR_SHOWN=$RUN_DIR
case "$RUN_DIR" in /*|gs://*) ;; *) RUN_DIR_SHOWN="$WORKDIR/$RUN_DIR" ;; esac  # relative: under the workdir
export JOB_NAME NODES GPUS_PER_NODE CPUS_PER_TASK TIME_LIMIT PARTITION LOG_DIR EXTRA_SBATCH TRAIN_ARGS \
  MAX_RESTARTS SIGNAL_SECONDS
RUN_DIR=$(quote_word "$RUN_DIR_SHOWN")
export RUN_DIR
export WORKDIR="$WORKDIR_Q" PYTHON="$PYTHON_Q"
TEMPLATE="$(dirname "${BASH_SOURCE[0]}")/slurm.sbatch.tmpl"
# shellcheck disable=SC2016  # the single quotes are envsubst's variable list, not a shell expansion
VARS='${JOB_NAME} ${NODES} ${GPUS_PER_NODE} ${CPUS_PER_TASK} ${TIME_LIMIT} ${PARTITION} ${LOG_DIR} ${EXTRA_SBATCH} ${WORKDIR} ${PYTHON} ${TRAIN_ARGS} ${MAX_RESTARTS} ${SIGNAL_SECONDS} ${RUN_DIR}'
SCRIPT="${TMPDIR:-/tmp}/$JOB_NAME-$$.sbatch"
envsubst "$VARS" <"$TEMPLATE" >"$SCRIPT"

run mkdir -p "$LOG_DIR"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $SCRIPT:"
  cat "$SCRIPT"
fi
run sbatch "$SCRIPT"
[[ "$DRY_RUN" == 1 ]] || echo "# logs: $LOG_DIR/$JOB_NAME-<jobid>.out; cancel with scancel <jobid>" >&2
