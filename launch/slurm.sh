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
  --dry-run            print the rendered batch script and the sbatch command instead of submitting
Hydra overrides after -- go unchanged to the entry point on every node.
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
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1 (Hydra overrides go after --)" ;;
  esac
done
OVERRIDES=("$@")

require "$PARTITION" "SLURM partition" "--partition or SLURM_PARTITION"
require "$NODES" "number of nodes" "--nodes"
for pair in "nodes:$NODES" "gpus-per-node:$GPUS_PER_NODE" "cpus-per-task:$CPUS_PER_TASK"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ "$TIME_LIMIT" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] || die "--time '$TIME_LIMIT' is not a SLURM time (e.g. 04:00:00)"
PYTHON=${PYTHON:-$WORKDIR/.venv/bin/python}
LOG_DIR=${LOG_DIR:-$WORKDIR/runs/slurm}
EXTRA_SBATCH=""
[[ -n "$ACCOUNT" ]] && EXTRA_SBATCH="#SBATCH --account=$ACCOUNT"
TRAIN_ARGS=$(quote_cmd "$ENTRY" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
WORKDIR_Q=$(quote_word "$WORKDIR")
PYTHON_Q=$(quote_word "$PYTHON")

export JOB_NAME NODES GPUS_PER_NODE CPUS_PER_TASK TIME_LIMIT PARTITION LOG_DIR EXTRA_SBATCH TRAIN_ARGS
export WORKDIR="$WORKDIR_Q" PYTHON="$PYTHON_Q"
TEMPLATE="$(dirname "${BASH_SOURCE[0]}")/slurm.sbatch.tmpl"
# shellcheck disable=SC2016  # the single quotes are envsubst's variable list, not a shell expansion
VARS='${JOB_NAME} ${NODES} ${GPUS_PER_NODE} ${CPUS_PER_TASK} ${TIME_LIMIT} ${PARTITION} ${LOG_DIR} ${EXTRA_SBATCH} ${WORKDIR} ${PYTHON} ${TRAIN_ARGS}'
SCRIPT="${TMPDIR:-/tmp}/$JOB_NAME-$$.sbatch"
envsubst "$VARS" <"$TEMPLATE" >"$SCRIPT"

run mkdir -p "$LOG_DIR"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $SCRIPT:"
  cat "$SCRIPT"
fi
run sbatch "$SCRIPT"
[[ "$DRY_RUN" == 1 ]] || echo "# logs: $LOG_DIR/$JOB_NAME-<jobid>.out; cancel with scancel <jobid>" >&2
