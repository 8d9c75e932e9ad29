#!/usr/bin/env bash
# Runs on each TPU VM worker (shipped with the code by launch/tpu_vm.sh): keeps the training job alive
# independently of any ssh connection, and lets the launcher re-attach to it.
#
#   bash launch/worker_job.sh start RUN_DIR -- CMD...   start CMD detached (setsid + nohup); no-op if running
#   bash launch/worker_job.sh wait                      stream the log until the job ended; exit with its status
#   bash launch/worker_job.sh status                    print running | exited <status> | not started
#
# State lives in $ORCHESTRA_JOB_DIR (default ~/orchestra_job; wait polls every $ORCHESTRA_JOB_POLL s, 10): pid, train.log, exit_code. When the job
# ends its log is copied to RUN_DIR/logs/<host>.log (shared storage) before exit_code is written, so
# "exit_code exists" means the job is over and its outputs are written.
set -euo pipefail

JOB=${ORCHESTRA_JOB_DIR:-$HOME/orchestra_job}

running() {
  [[ -f "$JOB/pid" ]] && kill -0 "$(cat "$JOB/pid")" 2>/dev/null && [[ ! -f "$JOB/exit_code" ]]
}

copy_log() {  # copy_log RUN_DIR: the worker's log next to the run's outputs
  local dest
  dest="$1/logs/$(hostname).log"
  case "$1" in
    gs://*) gcloud storage cp "$JOB/train.log" "$dest" ;;
    *) mkdir -p "$1/logs" && cp "$JOB/train.log" "$dest" ;;
  esac
}

case "${1:-}" in
  start)
    RUN_DIR=${2:?usage: worker_job.sh start RUN_DIR -- CMD...}
    [[ "${3:-}" == "--" ]] || { echo "usage: worker_job.sh start RUN_DIR -- CMD..." >&2; exit 2; }
    shift 3
    mkdir -p "$JOB"
    if running; then
      echo "job already running (pid $(cat "$JOB/pid")); not started again"
      exit 0
    fi
    rm -f "$JOB/exit_code"
    setsid nohup bash "$0" _run "$RUN_DIR" "$@" >/dev/null 2>&1 </dev/null &
    echo $! >"$JOB/pid"
    echo "job started on $(hostname) (pid $!), log $JOB/train.log"
    ;;
  _run)
    RUN_DIR=$2
    shift 2
    status=0
    "$@" >"$JOB/train.log" 2>&1 || status=$?
    copy_log "$RUN_DIR" || echo "warning: could not copy the log to $RUN_DIR/logs" >>"$JOB/train.log"
    echo "$status" >"$JOB/exit_code"
    ;;
  wait)
    [[ -f "$JOB/pid" ]] || { echo "no job was started on $(hostname)" >&2; exit 3; }
    touch "$JOB/train.log"
    tail -n +1 -F "$JOB/train.log" 2>/dev/null &
    tailer=$!
    while [[ ! -f "$JOB/exit_code" ]]; do
      if ! kill -0 "$(cat "$JOB/pid")" 2>/dev/null && [[ ! -f "$JOB/exit_code" ]]; then
        sleep 2  # the wrapper may be writing exit_code right now
        [[ -f "$JOB/exit_code" ]] || { kill "$tailer"; echo "job died without an exit status" >&2; exit 4; }
      fi
      sleep "${ORCHESTRA_JOB_POLL:-10}"
    done
    sleep 1
    kill "$tailer" 2>/dev/null || true
    exit "$(cat "$JOB/exit_code")"
    ;;
  status)
    if [[ -f "$JOB/exit_code" ]]; then
      echo "exited $(cat "$JOB/exit_code")"
    elif running; then
      echo "running"
    else
      echo "not started"
    fi
    ;;
  *)
    echo "usage: worker_job.sh start RUN_DIR -- CMD... | wait | status" >&2
    exit 2
    ;;
esac
