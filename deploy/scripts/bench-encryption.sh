#!/usr/bin/env bash
# bench-encryption.sh - what encryption at rest costs, end to end, with `strata bench`.
#
# Starts `strata serve --dev` twice on 127.0.0.1, one after the other, each on a fresh
# data directory: once with its keyring (blobs sealed with AES-256-GCM per segment,
# manifests sealed in the metadata: the --dev default) and once with --keyring off. Both
# get the same cases (ROUNDS times, alternating which goes first), and with --server-pid
# the server's CPU seconds are measured; the table gives, per case, the median MB/s (or
# ops/s) of each, the server CPU per operation, and the cost of encryption as the median
# and geometric mean of the paired (same round) ratios of CPU per operation.
#
# With CLUSTER=1 the two servers are `strata dev cluster --meta 1 --storage 6 --api 1
# --k 4 --m 2` (erasure coded 4+2 across six storage processes, one frontend), with
# its keyring and with --keyring off, and the CPU is that of all eight processes.
#
# Environment:
#   STRATA_BIN   strata binary (default: <repo>/bin/strata)
#   CLUSTER      1: a 4+2 dev cluster instead of serve --dev
#   ROUNDS       runs of each case per server (default 3)
#   DURATION     timed part of each run (default 8s)
#   CASES_OVERRIDE  "id|scenario spec;..." to run other cases
#   RESULTS_DIR  where results.jsonl and logs go (default: ${TMPDIR:-/tmp}/strata-bench-encryption-<time>)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STRATA_BIN="${STRATA_BIN:-$REPO_ROOT/bin/strata}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8s}"
CLUSTER="${CLUSTER:-0}"
RESULTS_DIR="${RESULTS_DIR:-${TMPDIR:-/tmp}/strata-bench-encryption-$(date +%Y%m%d-%H%M%S)}"
# shellcheck source=lib.sh
. "$REPO_ROOT/deploy/scripts/lib.sh"
bench_setup bench-encryption

# id | strata bench scenario spec (CASES_OVERRIDE replaces them)
CASES=(
  "push-16MiB|push-blob:concurrency=4,size=16MiB"
  "pull-16MiB|pull-distinct:concurrency=4,size=16MiB"
  "push-small-images|push-small-images:concurrency=8"
  "manifest-get|manifest-get:concurrency=16,images=100"
)
if [ -n "${CASES_OVERRIDE:-}" ]; then IFS=';' read -r -a CASES <<<"$CASES_OVERRIDE"; fi

# start_target target dir: starts the server(s), sets URLS, PIDS (--server-pid args), PID.
start_target() {
  local target=$1 dir=$2 port
  if [ "$CLUSTER" = 1 ]; then
    local args=(dev cluster --meta 1 --storage 6 --api 1 --k 4 --m 2 --dir "$dir/data" --log-level warn)
    [ "$target" = plain ] && args+=(--keyring off)
    "$STRATA_BIN" "${args[@]}" >"$dir/serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 600); do [ -f "$dir/data/cluster.json" ] && break; sleep 0.1; done
    URLS="" PIDS=""
    local name pid http
    while read -r name pid http; do
      PIDS+=" --server-pid $name=$pid"
      [ "$http" = "-" ] || URLS+=" --url $http"
    done < <(cluster_nodes "$dir/data/cluster.json")
  else
    port=$(free_port)
    local args=(serve --dev --data-dir "$dir/data" --http-addr "127.0.0.1:$port" --log-level warn)
    [ "$target" = plain ] && args+=(--keyring off)
    "$STRATA_BIN" "${args[@]}" >"$dir/serve.log" 2>&1 &
    PID=$!
    URLS=" --url http://127.0.0.1:$port" PIDS=" --server-pid $PID"
  fi
  local url=${URLS# --url }
  url=${url%% *}
  for _ in $(seq 1 300); do curl -fsS "$url/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
}

run_target() { # target round
  local target=$1 round=$2 dir
  dir=$(mktemp -d "$RESULTS_DIR/$target-XXXX")
  start_target "$target" "$dir"
  for c in "${CASES[@]}"; do
    local id=${c%%|*} spec=${c#*|}
    echo "bench-encryption: round $round, $target, $id" >&2
    # shellcheck disable=SC2086 # URLS and PIDS are lists of arguments
    "$STRATA_BIN" bench $URLS --scenario "$spec" --duration "$DURATION" \
      $PIDS --case "$id" --target "$target" >>"$RESULTS" 2>>"$dir/bench.log" ||
      echo "bench-encryption: $target $id failed (see $dir/bench.log)" >&2
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
  rm -rf "$dir/data"
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="encrypted plain"; else order="plain encrypted"; fi
  for target in $order; do run_target "$target" "$round"; done
done

python3 - "$RESULTS" <<'PY'
import json, math, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cases = []
for r in rows:
    if r.get("case") not in cases:
        cases.append(r.get("case"))
def ok(r):
    return not r.get("setup_error") and r.get("ops")
def cpu_per_op(r):
    return 1000 * (r.get("server_cpu_s") or 0) / r["ops"]
# Rounds run the two servers back to back, alternating which goes first, so
# the cost is read from paired ratios (encrypted / plain in the same round):
# their median and geometric mean cancel the drift of a busy machine and the
# advantage of going first or second.
print("| case | encrypted | plain | throughput ratio | server CPU ms/op encrypted | plain | CPU cost, median of paired ratios | geometric mean | range |")
print("|---|---|---|---|---|---|---|---|---|")
for c in cases:
    rs = [r for r in rows if r.get("case") == c]
    enc = [r for r in rs if r.get("target") == "encrypted"]
    pla = [r for r in rs if r.get("target") == "plain"]
    key = "mb_per_s" if any(r.get("mb_per_s") for r in pla) else "ops_per_s"
    unit = "MB/s" if key == "mb_per_s" else "ops/s"
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    e = med([r.get(key) or 0 for r in enc if ok(r)])
    p = med([r.get(key) or 0 for r in pla if ok(r)])
    ratios = [cpu_per_op(a) / cpu_per_op(b) for a, b in zip(enc, pla) if ok(a) and ok(b) and cpu_per_op(b) > 0]
    if not ratios:
        print(f"| {c} | {e:.1f} {unit} | {p:.1f} {unit} | | | | no paired rounds | | |")
        continue
    gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    print(f"| {c} | {e:.1f} {unit} | {p:.1f} {unit} | {e/p:.2f}x | {med([cpu_per_op(r) for r in enc if ok(r)]):.2f} | "
          f"{med([cpu_per_op(r) for r in pla if ok(r)]):.2f} | {100*(med(ratios)-1):+.1f}% | {100*(gm-1):+.1f}% | "
          f"{100*(min(ratios)-1):+.0f}% to {100*(max(ratios)-1):+.0f}% ({len(ratios)} rounds) |")
PY
echo "bench-encryption: results in $RESULTS" >&2
