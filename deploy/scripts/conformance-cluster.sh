#!/usr/bin/env bash
# conformance-cluster.sh - run the OCI conformance suites against a local multi-process cluster.
#
# Starts `strata dev cluster --meta 3 --storage 6 --api 2` (4+2) in a temporary directory, waits
# for its cluster.json, runs deploy/scripts/conformance.sh (CONFORMANCE_URL=the first
# frontend, so the suites' requests go through one api node while metadata goes through
# Raft on the meta nodes and shards to the storage nodes), then stops the cluster.
#
# Environment:
#   STRATA_BIN          strata binary (default: <repo>/bin/strata)
#   DEV_CLUSTER_ARGS    arguments for `strata dev cluster` (default: --meta 3 --storage 6 --api 2, erasure 4+2)
#   READY_TIMEOUT       seconds to wait for cluster.json (default 120)
#   KEEP_CLUSTER_DIR=1  keep the cluster's data and logs (always copied to RESULTS_DIR on failure)
#   PROFILE, LEGACY_AUTOMATIC_CROSSMOUNT, RESULTS_DIR, CONFORMANCE_SCRIPT, SUITES, OCI_* ...
#                       as for conformance.sh (defaults PROFILE=all LEGACY_AUTOMATIC_CROSSMOUNT=1)
#
# Output ends with the runner's "N passed, N failed" line; the exit status is the
# runner's (0 all passed, 1 some failed, 2 infrastructure error).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STRATA_BIN="${STRATA_BIN:-$REPO_ROOT/bin/strata}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
DEV_CLUSTER_ARGS="${DEV_CLUSTER_ARGS:---meta 3 --storage 6 --api 2}"
export PROFILE="${PROFILE:-all}"
export LEGACY_AUTOMATIC_CROSSMOUNT="${LEGACY_AUTOMATIC_CROSSMOUNT:-1}"
export RESULTS_DIR="${RESULTS_DIR:-$REPO_ROOT/conformance-results/cluster-$(date +%Y%m%d-%H%M%S)-$$}"

fail() { echo "conformance-cluster: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

[ -x "$STRATA_BIN" ] || fail "strata binary not found at $STRATA_BIN (run make build)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/strata-conformance-cluster.XXXXXX")"
DIR="$WORK/cluster"
CLUSTER_PID=""
NOTED=0

note() { echo "conformance-cluster: $*" >&2; NOTED=1; }

save_logs() {
  mkdir -p "$RESULTS_DIR/cluster-logs" && cp "$WORK"/dev-cluster.log "$DIR"/*.log "$DIR"/cluster.json \
    "$RESULTS_DIR/cluster-logs/" 2>/dev/null || true
  note "cluster logs saved to $RESULTS_DIR/cluster-logs"
}

stop_cluster() {
  [ -n "$CLUSTER_PID" ] || return 0
  local pid="$CLUSTER_PID" i rc=0; CLUSTER_PID=""
  kill -INT "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    note "dev cluster (pid $pid) still running 60s after SIGINT; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || note "dev cluster exited with status $rc after SIGINT"
  return "$rc"
}
cleanup() {
  stop_cluster || true
  if [ "${KEEP_CLUSTER_DIR:-0}" = 1 ]; then echo "conformance-cluster: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2086
"$STRATA_BIN" dev cluster $DEV_CLUSTER_ARGS --dir "$DIR" >"$WORK/dev-cluster.log" 2>&1 &
CLUSTER_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until [ -f "$DIR/cluster.json" ]; do
  if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
    CLUSTER_PID=""
    cat "$WORK/dev-cluster.log" >&2
    save_logs
    fail "strata dev cluster exited during start-up"
  fi
  if ((SECONDS >= deadline)); then
    cat "$WORK/dev-cluster.log" >&2
    save_logs
    fail "no $DIR/cluster.json after ${READY_TIMEOUT}s"
  fi
  sleep 0.2
done
# The first entry of "frontends" in cluster.json.
URL="$(tr -d ' \n\t' <"$DIR/cluster.json" | sed -n 's/.*"frontends":\["\([^"]*\)".*/\1/p')"
[ -n "$URL" ] || { save_logs; fail "no frontend in $DIR/cluster.json"; }
echo "conformance-cluster: dev cluster ($DEV_CLUSTER_ARGS) up in $DIR; running the suites against $URL"

set +e
CONFORMANCE_URL="$URL" "$REPO_ROOT/deploy/scripts/conformance.sh" | tee "$WORK/out.txt"
rc=${PIPESTATUS[0]}
set -e
summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$WORK/out.txt" | tail -n 1 || true)"

if grep -q "exited on its own" "$WORK/dev-cluster.log"; then
  note "a node died during the run:"
  grep "exited on its own" "$WORK/dev-cluster.log" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
stop_cluster || { [ "$rc" -ne 0 ] || rc=1; }
[ "$rc" -eq 0 ] || save_logs
# Keep the runner's summary the last line of the output.
if [ "$NOTED" -eq 1 ] || [ -z "$summary" ]; then echo "${summary:-0 passed, 1 failed}"; fi
exit "$rc"
