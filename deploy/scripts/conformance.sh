#!/usr/bin/env bash
# conformance.sh - run the OCI distribution-spec conformance suites against Strata.
#
# By default it starts a fresh `strata serve --dev` on a free 127.0.0.1 port with a
# temporary data dir, runs the shared conformance runner against it, and stops it.
# With CONFORMANCE_URL it targets an already-running registry instead (a cluster's
# load balancer, or another registry for comparison) and starts nothing.
#
# Environment:
#   CONFORMANCE_URL     http(s)://HOST:PORT of a running registry; no server is started
#   CONFORMANCE_SCRIPT  the runner (default: <repo>/../shared/tools/oci-conformance.sh)
#   STRATA_BIN          strata binary to start (default: <repo>/bin/strata)
#   STRATA_ARGS         extra arguments for `strata serve --dev`
#   READY_TIMEOUT       seconds to wait for GET /v2/ to answer 200 (default 60)
#   PROFILE             passed to the runner (default: all)
#   LEGACY_AUTOMATIC_CROSSMOUNT  passed to the runner (default: 1)
#   every other knob of the runner (SUITES, RESULTS_DIR, OCI_*, ...) passes through.
#
# Output ends with the runner's "N passed, N failed" line; the exit status is the
# runner's (0 all passed, 1 some failed, 2 infrastructure error).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=lib.sh
. "$REPO_ROOT/deploy/scripts/lib.sh" # free_port
CONFORMANCE_SCRIPT="${CONFORMANCE_SCRIPT:-$REPO_ROOT/../shared/tools/oci-conformance.sh}"
STRATA_BIN="${STRATA_BIN:-$REPO_ROOT/bin/strata}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
export PROFILE="${PROFILE:-all}"
export LEGACY_AUTOMATIC_CROSSMOUNT="${LEGACY_AUTOMATIC_CROSSMOUNT:-1}"
export RESULTS_DIR="${RESULTS_DIR:-$REPO_ROOT/conformance-results/$(date +%Y%m%d-%H%M%S)-$$}"

fail() { echo "conformance: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

[ -f "$CONFORMANCE_SCRIPT" ] || fail "runner not found at $CONFORMANCE_SCRIPT (set CONFORMANCE_SCRIPT)"
command -v curl >/dev/null || fail "curl is required"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/strata-conformance.XXXXXX")"
SERVER_PID=""
SERVER_LOG="$WORK/strata.log"
NOTED=0 # set when something was printed after the runner's summary line

note() { echo "conformance: $*" >&2; NOTED=1; }

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid="$SERVER_PID"; SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || return 0
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    note "strata (pid $pid) still running 30s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || note "strata exited with status $rc after SIGTERM"
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server starts strata on a free port and waits until GET /v2/ answers 200.
# It retries on another port when the one picked was taken in the meantime.
start_server() {
  [ -x "$STRATA_BIN" ] || fail "strata binary not found at $STRATA_BIN (run make build)"
  local attempt port code deadline
  for attempt in 1 2 3; do
    port="$(free_port)" || fail "no free port found"
    rm -rf "$WORK/data"
    # shellcheck disable=SC2086
    "$STRATA_BIN" serve --dev --data-dir "$WORK/data" --http-addr "127.0.0.1:$port" ${STRATA_ARGS:-} \
      >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
      if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
      code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/" || true)"
      if [ "$code" = 200 ]; then URL="http://127.0.0.1:$port"; return 0; fi
      sleep 0.2
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "conformance: strata did not answer 200 on /v2/ within ${READY_TIMEOUT}s; log:" >&2
      tail -n 100 "$SERVER_LOG" >&2
      stop_server
      fail "strata not ready"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    if grep -qi 'address already in use' "$SERVER_LOG"; then continue; fi
    echo "conformance: strata exited during start-up; log:" >&2
    tail -n 100 "$SERVER_LOG" >&2
    fail "strata failed to start"
  done
  fail "could not bind a free port after 3 attempts"
}

if [ -n "${CONFORMANCE_URL:-}" ]; then
  URL="${CONFORMANCE_URL%/}"
  echo "conformance: using running registry at $URL"
else
  start_server
  echo "conformance: started $STRATA_BIN serve --dev on $URL (pid $SERVER_PID, data $WORK/data)"
fi

set +e
bash "$CONFORMANCE_SCRIPT" "$URL" | tee "$WORK/out.txt"
rc=${PIPESTATUS[0]}
set -e

summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$WORK/out.txt" | tail -n 1 || true)"
if [ -n "$SERVER_PID" ]; then
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    note "strata died during the run; last log lines:"
    tail -n 100 "$SERVER_LOG" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
  stop_server
  if [ "$rc" -ne 0 ] && mkdir -p "$RESULTS_DIR" && cp "$SERVER_LOG" "$RESULTS_DIR/strata.log"; then
    note "server log saved to $RESULTS_DIR/strata.log"
  fi
fi
# Keep the runner's summary the last line of the output.
if [ "$NOTED" -eq 1 ] || [ -z "$summary" ]; then echo "${summary:-0 passed, 1 failed}"; fi
exit "$rc"
