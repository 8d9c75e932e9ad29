#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create -> ship code -> install -> run on all workers -> fetch
# results -> delete. The VM is deleted on exit (success, failure or Ctrl-C) unless --keep.
#
#   launch/tpu_vm.sh --project my-proj --zone us-east5-a --accelerator v5p-32 -- \
#       +experiment=quickstart mesh=tpu_v5p_32 model=qwen3_0_6b
#   launch/tpu_vm.sh --dry-run ...   # print every command instead of running it
set -euo pipefail
# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: launch/tpu_vm.sh [options] -- [hydra overrides...]
  --project ID        GCP project (or $GCP_PROJECT)                       [required]
  --zone ZONE         TPU zone, e.g. us-east5-a (or $GCP_ZONE)             [required]
  --accelerator TYPE  e.g. v5litepod-8, v5p-32 (or $TPU_ACCELERATOR)       [required]
  --version VERSION   TPU runtime (default: v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p)
  --name NAME         TPU VM name (default: orchestra-<user>-<timestamp>)
  --spot              use Spot capacity (cheaper, can be preempted)
  --entry SCRIPT      entry point (default: experiments/train.py)
  --results DIR       local folder for fetched results (default: results/<name>)
  --install CMD       install command run in the code folder on every worker (default: uv venv with
                      Python 3.11 + pip install -e '.[tpu]')
  --keep              do not delete the TPU VM on exit
  --dry-run           print the commands instead of running them
Hydra overrides after -- go unchanged to the entry point on every worker; run_dir=... among them sets
the remote run folder (default: runs/<name>), which is fetched from worker 0.
USAGE
}

PROJECT=${GCP_PROJECT:-}
ZONE=${GCP_ZONE:-}
ACCELERATOR=${TPU_ACCELERATOR:-}
VERSION=""
NAME="orchestra-${USER:-user}-$(date +%m%d-%H%M%S)"
SPOT=0
ENTRY=experiments/train.py
RESULTS=""
KEEP=0
INSTALL_CMD=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT=${2:-}; shift 2 ;;
    --zone) ZONE=${2:-}; shift 2 ;;
    --accelerator) ACCELERATOR=${2:-}; shift 2 ;;
    --version) VERSION=${2:-}; shift 2 ;;
    --name) NAME=${2:-}; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --entry) ENTRY=${2:-}; shift 2 ;;
    --results) RESULTS=${2:-}; shift 2 ;;
    --install) INSTALL_CMD=${2:-}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1 (Hydra overrides go after --)" ;;
  esac
done
OVERRIDES=("$@")

require "$PROJECT" "GCP project" "--project or GCP_PROJECT"
require "$ZONE" "TPU zone" "--zone or GCP_ZONE"
require "$ACCELERATOR" "TPU accelerator type" "--accelerator or TPU_ACCELERATOR"
if [[ -z "$VERSION" ]]; then
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
  RUN_DIR="runs/$NAME"
  OVERRIDES=("run_dir=$RUN_DIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
fi
RESULTS=${RESULTS:-results/$NAME}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE="${TMPDIR:-/tmp}/$NAME-code.tar.gz"
REMOTE_DIR=orchestra_jax
DEFAULT_INSTALL="(test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh)"
DEFAULT_INSTALL+=" && ~/.local/bin/uv venv -q --python 3.11 .venv && ~/.local/bin/uv pip install -q -p .venv -e '.[tpu]'"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--project "$PROJECT" --zone "$ZONE")

teardown() {
  local status=$?
  trap - EXIT INT TERM  # run once, also after Ctrl-C
  if [[ "$KEEP" == 1 ]]; then
    echo "# --keep: TPU VM $NAME is still running (and billing). Delete it with:" >&2
    echo "#   $(quote_cmd "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet)" >&2
  else
    run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet || \
      echo "error: deleting $NAME failed: delete it by hand, it bills until you do" >&2
  fi
  exit "$status"
}

CREATE=("${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR" --version "$VERSION")
[[ "$SPOT" == 1 ]] && CREATE+=(--spot)
# The trap is set before create: a Ctrl-C during a slow pod-slice creation still deletes what exists.
trap teardown EXIT INT TERM
run "${CREATE[@]}"

# Ship the working tree (not .git, venvs or previous runs), unpack and install on every worker.
run tar -C "$REPO_ROOT" --exclude=.git --exclude=.venv --exclude=runs --exclude=results \
  --exclude=outputs --exclude=__pycache__ -czf "$ARCHIVE" .
run "${GCLOUD_TPU[@]}" scp "$ARCHIVE" "$NAME:code.tar.gz" "${WHERE[@]}" --worker=all
# TPU VM images ship Python 3.10; the package needs >= 3.11, so uv provides the interpreter and venv.
INSTALL="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf code.tar.gz && cd $REMOTE_DIR"
INSTALL+=" && ${INSTALL_CMD:-$DEFAULT_INSTALL}"
run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$INSTALL"

# The same command on every worker; jax.distributed joins them (ORCHESTRA_DISTRIBUTED=on).
TRAIN="cd $REMOTE_DIR && ORCHESTRA_DISTRIBUTED=on .venv/bin/python $(quote_cmd "$ENTRY" "${OVERRIDES[@]}")"
run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$TRAIN"

run mkdir -p "$RESULTS"
run "${GCLOUD_TPU[@]}" scp --recurse "$NAME:$REMOTE_DIR/$RUN_DIR" "$RESULTS/" "${WHERE[@]}" --worker=0
[[ "$DRY_RUN" == 1 ]] || echo "# results in $RESULTS" >&2
