#!/usr/bin/env bash
# GKE + JobSet: one pod per TPU host of a slice, each running the same command; JAX joins them.
# Renders launch/jobset.yaml.tmpl, applies it, and (with --wait) waits for completion and deletes it.
#
#   launch/gke_jobset.sh --project my-proj --location us-east5 --cluster tpu-cluster \
#       --image us-docker.pkg.dev/my-proj/orchestra/train:latest --accelerator tpu-v5p-slice \
#       --topology 2x2x4 --num-hosts 4 --bucket my-bucket -- +experiment=quickstart mesh=tpu_v5p_32
#
# run_dir is on the bucket (GCS FUSE CSI at /gcs/<bucket>, default /gcs/<bucket>/runs/<name>); a failed or
# preempted pod restarts the whole slice (--max-restarts) and the same command resumes from its checkpoint.
set -euo pipefail
# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: launch/gke_jobset.sh [options] -- [hydra overrides...]
  --project ID         GCP project (or $GCP_PROJECT)                                   [required]
  --location LOC       cluster zone or region (or $GKE_LOCATION)                       [required]
  --cluster NAME       GKE cluster (or $GKE_CLUSTER)                                   [required]
  --image IMAGE        container image with this repository installed (or $IMAGE)     [required]
  --accelerator TYPE   GKE TPU accelerator, e.g. tpu-v5p-slice, tpu-v5-lite-podslice   [required]
  --topology TOPO      slice topology, e.g. 2x2x4 (v5p-32), 2x4 (v5e-8)               [required]
  --num-hosts N        TPU hosts (pods) in the slice, e.g. 4 for v5p-32, 1 for v5e-8  [required]
  --chips-per-host N   TPU chips per host (default: 4)
  --name NAME          JobSet name (default: orchestra-<user>-<timestamp>)
  --namespace NS       Kubernetes namespace (default: default)
  --workdir DIR        repository folder inside the image (default: /app)
  --entry SCRIPT       entry point (default: experiments/train.py)
  --bucket NAME        GCS bucket mounted at /gcs/NAME in every pod (GCS FUSE CSI)           [required]
  --max-restarts N     JobSet restarts of the slice after a failure or preemption (default: 3)
  --grace SECONDS      terminationGracePeriodSeconds: time to save the step after SIGTERM (default: 300)
  --wait               wait for the JobSet to end; delete it only once it ended and run_dir is in the bucket
  --timeout DURATION   with --wait, how long to wait (default: 24h)
  --dry-run            print the commands and the rendered JobSet instead of running them
Hydra overrides after -- go unchanged to the entry point; run_dir must be under /gcs/<bucket>/ (or
gs://<bucket>/): the pods' own disks vanish with them and multi-host checkpoints need one shared folder.
USAGE
}

PROJECT=${GCP_PROJECT:-}
LOCATION=${GKE_LOCATION:-}
CLUSTER=${GKE_CLUSTER:-}
IMAGE=${IMAGE:-}
TPU_ACCELERATOR=""
TPU_TOPOLOGY=""
NUM_HOSTS=""
CHIPS_PER_HOST=4
NAME="orchestra-${USER:-user}-$(date +%m%d-%H%M%S)"
NAMESPACE=default
WORKDIR=/app
ENTRY=experiments/train.py
MAX_RESTARTS=3
GRACE_SECONDS=300
BUCKET=""
WAIT=0
TIMEOUT=24h
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT=${2:-}; shift 2 ;;
    --location) LOCATION=${2:-}; shift 2 ;;
    --cluster) CLUSTER=${2:-}; shift 2 ;;
    --image) IMAGE=${2:-}; shift 2 ;;
    --accelerator) TPU_ACCELERATOR=${2:-}; shift 2 ;;
    --topology) TPU_TOPOLOGY=${2:-}; shift 2 ;;
    --num-hosts) NUM_HOSTS=${2:-}; shift 2 ;;
    --chips-per-host) CHIPS_PER_HOST=${2:-}; shift 2 ;;
    --name) NAME=${2:-}; shift 2 ;;
    --namespace) NAMESPACE=${2:-}; shift 2 ;;
    --workdir) WORKDIR=${2:-}; shift 2 ;;
    --entry) ENTRY=${2:-}; shift 2 ;;
    --max-restarts) MAX_RESTARTS=${2:-}; shift 2 ;;
    --grace) GRACE_SECONDS=${2:-}; shift 2 ;;
    --bucket) BUCKET=${2:-}; shift 2 ;;
    --wait) WAIT=1; shift ;;
    --timeout) TIMEOUT=${2:-}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1 (Hydra overrides go after --)" ;;
  esac
done
OVERRIDES=("$@")

require "$PROJECT" "GCP project" "--project or GCP_PROJECT"
require "$LOCATION" "cluster location" "--location or GKE_LOCATION"
require "$CLUSTER" "GKE cluster" "--cluster or GKE_CLUSTER"
require "$IMAGE" "container image" "--image or IMAGE"
require "$TPU_ACCELERATOR" "TPU accelerator" "--accelerator"
require "$TPU_TOPOLOGY" "TPU topology" "--topology"
require "$NUM_HOSTS" "number of TPU hosts" "--num-hosts"
require "$BUCKET" "GCS bucket for run_dir" "--bucket"
for pair in "num-hosts:$NUM_HOSTS" "chips-per-host:$CHIPS_PER_HOST" "max-restarts:$MAX_RESTARTS" "grace:$GRACE_SECONDS"; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || die "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
[[ "$NAME" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME' is not a valid Kubernetes name"

RUN_DIR=$(override_value run_dir "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
if [[ -z "$RUN_DIR" ]]; then
  RUN_DIR="/gcs/$BUCKET/runs/$NAME"
  OVERRIDES=("run_dir=$RUN_DIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
fi
[[ "$RUN_DIR" == "/gcs/$BUCKET/"* || "$RUN_DIR" == "gs://$BUCKET/"* ]] || \
  die "run_dir=$RUN_DIR is not in the bucket: use run_dir=/gcs/$BUCKET/... (pod disks vanish on restart, hosts need one checkpoint folder)"
RUN_URL=$(gcs_url "$RUN_DIR")

# YAML flow list of double-quoted strings: ["python", "experiments/train.py", "key=value", ...].
yaml_list() {
  local out="" arg
  for arg in "$@"; do
    arg=${arg//\\/\\\\}
    arg=${arg//\"/\\\"}
    out+="\"$arg\", "
  done
  printf '[%s]' "${out%, }"
}
COMMAND=$(yaml_list python "$ENTRY" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
export NAME NAMESPACE MAX_RESTARTS NUM_HOSTS TPU_ACCELERATOR TPU_TOPOLOGY IMAGE WORKDIR COMMAND CHIPS_PER_HOST \
  GRACE_SECONDS BUCKET
TEMPLATE="$(dirname "${BASH_SOURCE[0]}")/jobset.yaml.tmpl"
# shellcheck disable=SC2016  # the single quotes are envsubst's variable list, not a shell expansion
VARS='${NAME} ${NAMESPACE} ${MAX_RESTARTS} ${NUM_HOSTS} ${TPU_ACCELERATOR} ${TPU_TOPOLOGY} ${IMAGE} ${WORKDIR} ${COMMAND} ${CHIPS_PER_HOST} ${GRACE_SECONDS} ${BUCKET}'
RENDERED="${TMPDIR:-/tmp}/$NAME-jobset.yaml"
envsubst "$VARS" <"$TEMPLATE" >"$RENDERED"

run gcloud container clusters get-credentials "$CLUSTER" --project "$PROJECT" --location "$LOCATION"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $RENDERED:"
  cat "$RENDERED"
fi
run kubectl apply -f "$RENDERED"
if [[ "$WAIT" == 1 ]]; then
  if ! run kubectl wait --namespace "$NAMESPACE" --for=condition=Completed "jobset/$NAME" --timeout "$TIMEOUT"; then
    failed=$(run kubectl get --namespace "$NAMESPACE" "jobset/$NAME" \
      -o 'jsonpath={.status.conditions[?(@.type=="Failed")].status}') || failed=""
    if [[ "$failed" != True ]]; then  # still running (or unknown): deleting it would kill the job
      echo "# jobset/$NAME has not ended within $TIMEOUT; it keeps running. Delete it when done:" >&2
      echo "#   kubectl delete --namespace $NAMESPACE jobset/$NAME" >&2
      exit 1
    fi
    echo "warning: jobset/$NAME failed after its restarts; its checkpoints stay in $RUN_URL" >&2
  fi
  run gcloud storage ls "$RUN_URL/" >/dev/null || \
    die "$RUN_URL is not readable; jobset/$NAME is kept so nothing is lost"
  run kubectl delete --namespace "$NAMESPACE" "jobset/$NAME"
else
  echo "# follow: kubectl logs --namespace $NAMESPACE -f -l jobset.sigs.k8s.io/jobset-name=$NAME --max-log-requests $NUM_HOSTS" >&2
  echo "# when done (stops TPU billing if the node pool autoscales to zero): kubectl delete --namespace $NAMESPACE jobset/$NAME" >&2
fi
