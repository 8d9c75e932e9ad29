#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create (on demand, Spot, or a queued resource) -> ship code ->
# install -> start training DETACHED on every worker -> follow worker 0's log (re-attachable) -> when the
# job has ended and its outputs are on shared storage: fetch them and delete the VM.
#
#   launch/tpu_vm.sh --project my-proj --zone us-east5-a --accelerator v5p-32 --bucket my-bucket -- \
#       +experiment=quickstart mesh=tpu_v5p_32 model=qwen3_0p6b
#   launch/tpu_vm.sh attach --project my-proj --zone us-east5-a --name NAME --bucket my-bucket   # re-attach
#   launch/tpu_vm.sh down --project my-proj --zone us-east5-a --name NAME [--force]             # delete
#   launch/tpu_vm.sh --dry-run ...   # print every command instead of running it
#
# A dropped connection or a killed launcher never stops the job (it runs under setsid/nohup on the
# workers) and never deletes the VM while the job runs. A preempted Spot VM is recreated up to
# --max-restarts times and the job resumes from the last checkpoint in run_dir.
set -euo pipefail
# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: launch/tpu_vm.sh [up|attach|down] [options] -- [hydra overrides...]
  up (default)        create the VM, install, start the job detached, follow it, tear down when safe
  attach              follow the running job of --name again; tear down when it has ended (as up)
  down                delete --name, only if its job has ended (or never started), unless --force
  --project ID        GCP project (or $GCP_PROJECT)                                    [required]
  --zone ZONE         TPU zone, e.g. us-east5-a (or $GCP_ZONE)                          [required]
  --accelerator TYPE  e.g. v5litepod-8, v5p-32 (or $TPU_ACCELERATOR)                    [required for up]
  --bucket NAME       GCS bucket mounted with gcsfuse at /gcs/NAME on every worker; run_dir defaults
                      to /gcs/NAME/runs/<name>. run_dir must be on shared storage (gs://... or /gcs/...):
                      multi-host orbax saves need one folder all workers see, and the VM disks are deleted
  --version VERSION   TPU runtime (default: v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p)
  --name NAME         TPU VM name (default: orchestra-<user>-<timestamp>; required for attach/down)
  --spot              Spot capacity (cheaper, can be preempted; the job resumes after a restart)
  --queued            create through a queued resource (waits for capacity instead of failing)
  --max-restarts N    recreate a preempted VM and resume the job up to N times (default: 3 with --spot, else 0)
  --entry SCRIPT      entry point (default: experiments/train.py)
  --results DIR       local folder the run_dir is copied to at the end (default: results/<name>)
  --install CMD       install command run in the code folder on every worker (default: uv venv with
                      Python 3.11 + pip install -e '.[tpu]')
  --keep              never delete the TPU VM
  --force             with down: delete even if the job is still running
  --poll SECONDS      seconds between checks while waiting (default: 60)
  --dry-run           print the commands instead of running them
USAGE
}

ACTION=up
PROJECT=${GCP_PROJECT:-}
ZONE=${GCP_ZONE:-}
ACCELERATOR=${TPU_ACCELERATOR:-}
VERSION=""
NAME=""
BUCKET=""
SPOT=0
QUEUED=0
MAX_RESTARTS=""
ENTRY=experiments/train.py
RESULTS=""
KEEP=0
FORCE=0
POLL=60
INSTALL_CMD=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT=${2:-}; shift 2 ;;
    --zone) ZONE=${2:-}; shift 2 ;;
    --accelerator) ACCELERATOR=${2:-}; shift 2 ;;
    --version) VERSION=${2:-}; shift 2 ;;
    --name) NAME=${2:-}; shift 2 ;;
    --bucket) BUCKET=${2:-}; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --max-restarts) MAX_RESTARTS=${2:-}; shift 2 ;;
    --entry) ENTRY=${2:-}; shift 2 ;;
    --results) RESULTS=${2:-}; shift 2 ;;
    --install) INSTALL_CMD=${2:-}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --force) FORCE=1; shift ;;
    --poll) POLL=${2:-}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    up|attach|down) ACTION=$1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1 (Hydra overrides go after --)" ;;
  esac
done
OVERRIDES=("$@")

require "$PROJECT" "GCP project" "--project or GCP_PROJECT"
require "$ZONE" "TPU zone" "--zone or GCP_ZONE"
if [[ "$ACTION" == up ]]; then
  require "$ACCELERATOR" "TPU accelerator type" "--accelerator or TPU_ACCELERATOR"
  NAME=${NAME:-orchestra-${USER:-user}-$(date +%m%d-%H%M%S)}
else
  require "$NAME" "TPU VM name" "--name"
fi
[[ -z "$MAX_RESTARTS" ]] && MAX_RESTARTS=$((SPOT == 1 ? 3 : 0))
for pair in "max-restarts:$MAX_RESTARTS" "poll:$POLL"; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || die "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
if [[ "$ACTION" == up && -z "$VERSION" ]]; then
  case "$ACCELERATOR" in
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default runtime version for accelerator $ACCELERATOR (pass --version)" ;;
  esac
fi

RUN_DIR=$(override_value run_dir "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
if [[ -z "$RUN_DIR" ]]; then
  [[ -n "$BUCKET" ]] || die "run_dir must be on shared storage: pass --bucket NAME (run_dir becomes /gcs/NAME/runs/$NAME) or run_dir=gs://... / run_dir=/gcs/..."
  RUN_DIR="/gcs/$BUCKET/runs/$NAME"
  OVERRIDES=("run_dir=$RUN_DIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
fi
is_shared_path "$RUN_DIR" || die "run_dir=$RUN_DIR is on a worker's local disk: multi-host checkpoints need one folder every worker sees, and the disk is deleted with the VM; use run_dir=gs://BUCKET/... or --bucket BUCKET (/gcs/BUCKET/...)"
if [[ "$RUN_DIR" == /gcs/* && -z "$BUCKET" ]]; then
  BUCKET=${RUN_DIR#/gcs/}
  BUCKET=${BUCKET%%/*}
fi
RUN_URL=$(gcs_url "$RUN_DIR")
RESULTS=${RESULTS:-results/$NAME}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE="${TMPDIR:-/tmp}/$NAME-code.tar.gz"
REMOTE_DIR=orchestra_jax
DEFAULT_INSTALL="(test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh)"
DEFAULT_INSTALL+=" && ~/.local/bin/uv venv -q --python 3.11 .venv && ~/.local/bin/uv pip install -q -p .venv -e '.[tpu]'"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
QUEUED_RES=(gcloud compute tpus queued-resources)
WHERE=(--project "$PROJECT" --zone "$ZONE")
ssh_workers() {  # ssh_workers WORKER COMMAND
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" "--worker=$1" --command="$2"
}
REATTACH=$(quote_cmd launch/tpu_vm.sh attach --project "$PROJECT" --zone "$ZONE" --name "$NAME" -- "run_dir=$RUN_DIR")
DOWN=$(quote_cmd launch/tpu_vm.sh down --project "$PROJECT" --zone "$ZONE" --name "$NAME")

JOB_STARTED=0   # set once the job runs on the workers: from then on the VM is deleted only when it ended
JOB_ENDED=0

vm_state() {  # READY, PREEMPTED, ... ("" when it does not exist; READY in --dry-run)
  local state
  state=$(run "${GCLOUD_TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null) || state=""
  [[ "$DRY_RUN" == 1 ]] && state=READY
  printf '%s\n' "$state"
}

delete_vm() {
  if [[ "$QUEUED" == 1 ]]; then
    run "${QUEUED_RES[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

create_vm() {
  if [[ "$QUEUED" == 1 ]]; then
    local create=("${QUEUED_RES[@]}" create "$NAME" --node-id "$NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR"
                  --runtime-version "$VERSION")
    [[ "$SPOT" == 1 ]] && create+=(--spot)
    run "${create[@]}"
    local state=""
    until [[ "$state" == ACTIVE ]]; do
      state=$(run "${QUEUED_RES[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state.state)') || state=""
      [[ "$DRY_RUN" == 1 ]] && state=ACTIVE
      case "$state" in
        FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
        ACTIVE) ;;
        *) echo "# queued resource $NAME: ${state:-pending}; waiting for capacity" >&2; sleep "$POLL" ;;
      esac
    done
  else
    local create=("${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR" --version "$VERSION")
    [[ "$SPOT" == 1 ]] && create+=(--spot)
    run "${create[@]}"
  fi
}

install_and_start() {
  run tar -C "$REPO_ROOT" --exclude=.git --exclude=.venv --exclude=runs --exclude=results \
    --exclude=outputs --exclude=__pycache__ -czf "$ARCHIVE" .
  run "${GCLOUD_TPU[@]}" scp "$ARCHIVE" "$NAME:code.tar.gz" "${WHERE[@]}" --worker=all
  # TPU VM images ship Python 3.10; the package needs >= 3.11, so uv provides the interpreter and venv.
  local install="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf code.tar.gz && cd $REMOTE_DIR"
  install+=" && ${INSTALL_CMD:-$DEFAULT_INSTALL}"
  if [[ -n "$BUCKET" ]]; then  # the same bucket at the same path on every worker
    install+=" && (command -v gcsfuse >/dev/null || (curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
    install+=" | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc]"
    install+=" https://packages.cloud.google.com/apt gcsfuse-jammy main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list"
    install+=" && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse))"
    install+=" && sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET"
    install+=" && (mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET)"
  fi
  ssh_workers all "$install"
  # Detached: the job survives the ssh session; jax.distributed joins the workers (ORCHESTRA_DISTRIBUTED=on).
  local train
  train=$(quote_cmd env ORCHESTRA_DISTRIBUTED=on .venv/bin/python "$ENTRY" "${OVERRIDES[@]}")
  ssh_workers all "cd $REMOTE_DIR && bash launch/worker_job.sh start $(quote_word "$RUN_DIR") -- $train"
  JOB_STARTED=1
}

# Follows worker 0's log until the job has ended on every worker; reconnects after a dropped ssh.
# Returns the job's exit status, or 75 when the VM was preempted (the caller restarts it).
follow_job() {
  local status
  while true; do
    status=0
    ssh_workers 0 "cd $REMOTE_DIR && bash launch/worker_job.sh wait" || status=$?
    [[ "$status" == 143 ]] && return 75  # SIGTERM: the job saved its step and stopped (preemption)
    [[ "$status" == 130 ]] && exit 130   # Ctrl-C reached ssh before this shell: stop here, the job runs on
    if [[ "$status" == 255 || "$status" == 4 ]]; then  # ssh lost, or the worker's job vanished
      case "$(vm_state)" in
        READY) echo "# connection to $NAME lost; the job keeps running, re-attaching in ${POLL}s" >&2
               sleep "$POLL"; continue ;;
        *) return 75 ;;
      esac
    fi
    local all
    if ! all=$(ssh_workers all "cd $REMOTE_DIR && bash launch/worker_job.sh status"); then
      # an unreadable state is not an ended job: never conclude "ended" (and delete the VM) from a failed query
      echo "# could not read the job's state on $NAME; re-attaching in ${POLL}s" >&2
      sleep "$POLL"; continue
    fi
    if [[ "$DRY_RUN" == 1 || "$all" != *running* ]]; then
      JOB_ENDED=1
      return "$status"
    fi
    echo "# worker 0 ended, other workers still running; waiting" >&2
    sleep "$POLL"
  done
}

# The job's outputs are where they must be before anything is deleted.
# shellcheck disable=SC2329  # called from teardown (the EXIT trap)
outputs_safe() {
  run gcloud storage ls "$RUN_URL/" >/dev/null
}

# shellcheck disable=SC2329  # invoked by the trap
teardown() {
  local status=$?
  trap - EXIT INT TERM  # run once, also after Ctrl-C
  if [[ "$KEEP" == 1 ]]; then
    echo "# --keep: TPU VM $NAME is still running (and billing). Delete it with: $DOWN" >&2
  elif [[ "$JOB_STARTED" == 1 && "$JOB_ENDED" == 0 ]]; then
    echo "# the job is still running on $NAME (this launcher stopped, the job did not)." >&2
    echo "#   re-attach:           $REATTACH" >&2
    echo "#   delete when it ends: $DOWN" >&2
  elif [[ "$JOB_ENDED" == 1 ]] && ! outputs_safe; then
    echo "error: $RUN_URL is not readable: keeping $NAME so nothing is lost; copy the run_dir, then: $DOWN" >&2
  else
    delete_vm || echo "error: deleting $NAME failed: delete it by hand, it bills until you do" >&2
  fi
  exit "$status"
}

if [[ "$ACTION" == down ]]; then
  if [[ "$FORCE" != 1 ]]; then
    states=$(ssh_workers all "cd $REMOTE_DIR && bash launch/worker_job.sh status" 2>/dev/null) || states=""
    [[ "$states" == *running* ]] && die "the job on $NAME is still running; wait for it ($REATTACH) or pass --force"
  fi
  delete_vm
  exit 0
fi

# The trap is set before create: a Ctrl-C during a slow pod-slice creation still deletes what exists.
trap teardown EXIT INT TERM
if [[ "$ACTION" == up ]]; then
  create_vm
  install_and_start
else
  JOB_STARTED=1
fi
restarts=0
while true; do
  status=0
  follow_job || status=$?
  [[ "$status" == 75 ]] || break
  if (( restarts >= MAX_RESTARTS )); then
    echo "error: $NAME was preempted and --max-restarts $MAX_RESTARTS is used up; rerun to resume from $RUN_DIR" >&2
    JOB_ENDED=1
    break
  fi
  restarts=$((restarts + 1))
  echo "# $NAME was preempted: recreating it (restart $restarts/$MAX_RESTARTS); the job resumes from $RUN_DIR" >&2
  delete_vm || true
  JOB_STARTED=0
  create_vm
  install_and_start
done
if [[ "$status" == 0 ]]; then
  run mkdir -p "$RESULTS"
  run gcloud storage cp --recursive "$RUN_URL" "$RESULTS/"
  [[ "$DRY_RUN" == 1 ]] || echo "# results in $RESULTS (and $RUN_URL)" >&2
fi
exit "$status"
