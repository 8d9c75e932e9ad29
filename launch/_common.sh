# shellcheck shell=bash
# Shared helpers for the launch scripts (sourced, not run).

DRY_RUN=0
exec 3>&1  # --dry-run prints commands here, also from inside $(...) captures

die() {
  echo "error: $*" >&2
  exit 2
}

# Shell-quotes one word only when needed (single quotes), so printed commands stay readable.
quote_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command as one shell-quoted line (copy-pasteable).
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    out+="$(quote_word "$arg") "
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or with --dry-run prints it prefixed by "+ " instead.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ %s\n' "$(quote_cmd "$@")" >&3
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# require VALUE "what it is" "--flag / ENV_VAR": fails clearly when a required setting is empty.
require() {
  [[ -n "$1" ]] || die "missing required setting: $2 (pass $3)"
}

# Prints the value of key=VALUE among the Hydra overrides, or nothing.
override_value() {
  local key=$1 arg
  shift
  for arg in "$@"; do
    if [[ "$arg" == "$key="* ]]; then
      printf '%s\n' "${arg#"$key"=}"
      return 0
    fi
  done
  return 0
}

# True when PATH is on storage every host of a job (and the launcher) can see after the hosts are gone:
# a gs:// URL or a GCS FUSE mount under /gcs/.
is_shared_path() {
  [[ "$1" == gs://* || "$1" == /gcs/* ]]
}

# The gs:// URL of a shared run_dir (/gcs/BUCKET/x -> gs://BUCKET/x).
gcs_url() {
  case "$1" in
    gs://*) printf '%s\n' "$1" ;;
    /gcs/*) printf 'gs://%s\n' "${1#/gcs/}" ;;
    *) return 1 ;;
  esac
}
