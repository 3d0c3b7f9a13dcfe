#!/usr/bin/env bash
# bench-memory.sh - a frontend's memory under 256 concurrent blob pulls, with `strata bench`.
#
# Starts `strata serve --dev` on 127.0.0.1 on a fresh data directory for each case, once
# with the read memory budget at its default (--read-memory 1GiB) and once with a much
# larger one (LARGE_READ_MEMORY), and runs 256 pullers against it:
#   pull-distinct:concurrency=256,size=64MiB,blobs=64   (4 GiB of distinct blobs)
#   pull-herd:concurrency=256,size=64MiB                (everyone pulls one blob)
# with --server-pid, so the server's peak RSS during the timed part is sampled (and its
# VmHWM, the peak since it started, read at the end). Pulls refused with 429
# TOOMANYREQUESTS are retried by the bench after their Retry-After and counted
# (throttled), not failed. Prints a table of throughput, latency, 429s and peak RSS.
#
# Environment:
#   STRATA_BIN         strata binary (default: <repo>/bin/strata)
#   DURATION           timed part of each run (default 10s; pulls under way then finish)
#   LARGE_READ_MEMORY  the "much larger" budget (default 64GiB: no bound in practice)
#   RESULTS_DIR        where results.jsonl and logs go (default: ${TMPDIR:-/tmp}/strata-bench-memory-<time>)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STRATA_BIN="${STRATA_BIN:-$REPO_ROOT/bin/strata}"
DURATION="${DURATION:-10s}"
LARGE_READ_MEMORY="${LARGE_READ_MEMORY:-64GiB}"
RESULTS_DIR="${RESULTS_DIR:-${TMPDIR:-/tmp}/strata-bench-memory-$(date +%Y%m%d-%H%M%S)}"
# shellcheck source=lib.sh
. "$REPO_ROOT/deploy/scripts/lib.sh"
bench_setup bench-memory

# target | extra serve flags
TARGETS=(
  "default-budget|"
  "read-memory-$LARGE_READ_MEMORY|--read-memory $LARGE_READ_MEMORY"
)
# id | strata bench scenario spec
CASES=(
  "pull-distinct-256|pull-distinct:concurrency=256,size=64MiB,blobs=64"
  "pull-herd-256|pull-herd:concurrency=256,size=64MiB"
)

run_case() { # target flags id spec
  local target=$1 flags=$2 id=$3 spec=$4 port dir pid
  port=$(free_port)
  dir=$(mktemp -d "$RESULTS_DIR/$target-$id-XXXX")
  # shellcheck disable=SC2086 # flags is a list of words
  "$STRATA_BIN" serve --dev --data-dir "$dir/data" --http-addr "127.0.0.1:$port" --log-level warn $flags \
    >"$dir/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "bench-memory: $target, $id" >&2
  "$STRATA_BIN" bench --url "http://127.0.0.1:$port" --scenario "$spec" --duration "$DURATION" \
    --server-pid "api=$pid" --case "$id" --target "$target" >>"$RESULTS" 2>>"$dir/bench.log" ||
    echo "bench-memory: $target $id failed (see $dir/bench.log)" >&2
  curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null |
    grep -E '^strata_(http_requests_throttled_total|read_memory_[a-z_]+) ' >"$dir/metrics.txt" || true
  sed "s/^/bench-memory:   /" "$dir/metrics.txt" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir/data"
}

for t in "${TARGETS[@]}"; do
  for c in "${CASES[@]}"; do
    run_case "${t%%|*}" "${t#*|}" "${c%%|*}" "${c#*|}"
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| server | case | pulls | errors | 429s retried | MB/s | p50 s | p99 s | peak RSS (sampled) | VmHWM |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if r.get("setup_error"):
        print(f"| {r.get('target')} | {r.get('case')} | setup failed: {r['setup_error']} |||||||")
        continue
    srv = (r.get("servers") or [{}])[0]
    print(f"| {r.get('target')} | {r.get('case')} | {r['ops']} | {r['errors']} | {r.get('throttled', 0)} | "
          f"{r['mb_per_s']:.0f} | {r['p50_ms']/1000:.1f} | {r['p99_ms']/1000:.1f} | "
          f"{srv.get('peak_rss_mib', 0):.0f} MiB | {srv.get('hwm_mib', 0):.0f} MiB |")
PY
echo "bench-memory: results in $RESULTS" >&2
