#!/usr/bin/env bash
# bench-compare.sh - Strata next to CNCF Distribution, on this machine, with `strata bench`.
#
# Installs CNCF Distribution (the `registry` binary, DISTRIBUTION_VERSION, into bin/tools),
# then starts three registries on 127.0.0.1, all at once and each with its data in a
# temporary directory:
#
#   distribution    registry serve, filesystem storage, in-memory blob descriptor cache
#   strata-dev      strata serve --dev (every role in one process, k=1 m=0)
#   strata-cluster  strata dev cluster --meta 3 --storage 6 --api 2 (erasure coding 4+2;
#                   the bench spreads its workers over both frontends)
#
# and runs every case against each of them in turn, case by case, rotating the order of
# the targets from one case to the next so that none always goes first. Each run is one
# `strata bench` invocation (untimed setup, then the timed part) with --server-pid for
# every server process, so the JSON lines carry the servers' CPU seconds and peak RSS.
# With DEGRADED=1 (default) the last run pulls again from the cluster after SIGKILL of
# two storage nodes (m = 2), to compare reads with m nodes down against healthy ones.
#
# At the end it prints `strata bench report` tables (Markdown): each target's headline
# metric and its ratio to Distribution, with the goals of issue 8 checked on the cluster
# and dev columns. Sizes are chosen so that the whole comparison takes about 10-15
# minutes on 2 cores; where they are smaller than the issue's, the case label says so.
#
# Environment:
#   STRATA_BIN            strata binary (default: <repo>/bin/strata)
#   DISTRIBUTION_VERSION  default v3.1.2; REGISTRY_BIN to use another registry binary
#   TARGETS               default "distribution strata-dev strata-cluster"
#   CASES                 comma-separated case ids to run (default: all; see CASES below)
#   DURATION              timed part of the duration-bound cases (default 8s)
#   DEGRADED=0            skip the run with two storage nodes down
#   RESULTS_DIR           where results.jsonl, report.md and logs go
#                         (default: ${TMPDIR:-/tmp}/strata-bench-compare-<time>)
#   KEEP_DATA=1           keep the registries' data directories
#
# Exit status: 0 when every run finished without errors, 1 otherwise (the table marks
# failed runs), 2 on an infrastructure error.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=lib.sh
. "$REPO_ROOT/deploy/scripts/lib.sh"
STRATA_BIN="${STRATA_BIN:-$REPO_ROOT/bin/strata}"
TOOLS_DIR="$REPO_ROOT/bin/tools"
DISTRIBUTION_VERSION="${DISTRIBUTION_VERSION:-v3.1.2}"
REGISTRY_BIN="${REGISTRY_BIN:-$TOOLS_DIR/registry}"
TARGETS="${TARGETS:-distribution strata-dev strata-cluster}"
CASES="${CASES:-all}"
DURATION="${DURATION:-8s}"
DEGRADED="${DEGRADED:-1}"
RESULTS_DIR="${RESULTS_DIR:-${TMPDIR:-/tmp}/strata-bench-compare-$(date +%Y%m%d-%H%M%S)}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"

fail() { echo "bench-compare: $*" >&2; exit 2; }
say() { echo "bench-compare: $*" >&2; }

command -v curl >/dev/null || fail "curl is required"
[ -x "$STRATA_BIN" ] || fail "strata binary not found at $STRATA_BIN (run make build)"

# The cases: id | label | strata bench --scenario spec | headline metrics with goals
# (the goals are issue 8's, as ratios to Distribution; for latency and RSS, lower is better).
CASE_LIST=(
  "push-256m|push 256 MiB blobs: 4 clients, 8 blobs (issue: 8 clients)|push-blob:size=256MiB,concurrency=4,count=8|mb_per_s:1.5"
  "push-1m|push 1 MiB blobs: 64 clients|push-blob:size=1MiB,concurrency=64,duration=$DURATION|ops_per_s:5"
  "herd|64 clients pull the same 64 MiB blob at once, digest-checked|pull-herd:size=64MiB,concurrency=64,count=64,verify=true|mb_per_s:1.2 frontend_peak_rss_mib:0.2"
  "pull-unchecked|8 clients pull 8 distinct 64 MiB blobs, unchecked|pull-distinct:size=64MiB,concurrency=8,blobs=8,verify=false,duration=$DURATION|mb_per_s:1.3"
  "manifest-get|manifest GET by tag: 64 clients, 1000 images|manifest-get:images=1000,concurrency=64,by=tag,method=GET,duration=$DURATION|ops_per_s:3"
  "small-images|push small images (config, 1 KiB layer, manifest): 16 clients|push-small-images:size=1KiB,concurrency=16,duration=$DURATION|ops_per_s:6"
  "tag-page|one page of 100 out of 10,000 tags: 1 client|tag-list:tags=10000,page-size=100,concurrency=1,duration=$DURATION|p50_ms:0.05"
  "push-images|push 50 images of 5 x 4 MiB layers: 4 clients|push-images:size=4MiB,layers=5,concurrency=4,count=50|mb_per_s:1.6"
  "pull-images|pull images of 5 x 4 MiB layers (50 images): 8 clients|pull-images:size=4MiB,layers=5,images=50,concurrency=8,duration=$DURATION|mb_per_s:1.2"
)

mkdir -p "$RESULTS_DIR"
RESULTS="$RESULTS_DIR/results.jsonl"
: >"$RESULTS"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-compare.XXXXXX")"

# --- Distribution ------------------------------------------------------------------
install_distribution() {
  local stamp="$TOOLS_DIR/.registry@$DISTRIBUTION_VERSION"
  if [ "$REGISTRY_BIN" = "$TOOLS_DIR/registry" ] && { [ ! -x "$REGISTRY_BIN" ] || [ ! -f "$stamp" ]; }; then
    command -v go >/dev/null || fail "go is required to install Distribution $DISTRIBUTION_VERSION"
    say "installing github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION into $TOOLS_DIR"
    mkdir -p "$TOOLS_DIR"
    GOBIN="$TOOLS_DIR" CGO_ENABLED=0 go install "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
    rm -f "$TOOLS_DIR"/.registry@*
    touch "$stamp"
  fi
  [ -x "$REGISTRY_BIN" ] || fail "no registry binary at $REGISTRY_BIN"
}

# --- processes -----------------------------------------------------------------------
PIDS_TO_STOP=()
CLUSTER_PID=""

# wait_v2 URL PID LOG: wait until GET URL/v2/ answers 200 while PID lives.
wait_v2() {
  local url="$1" pid="$2" log="$3" deadline=$((SECONDS + READY_TIMEOUT)) code
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 40 "$log" >&2; return 1; }
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/v2/" || true)"
    [ "$code" = 200 ] && return 0
    sleep 0.2
  done
  tail -n 40 "$log" >&2
  return 1
}

# Per target: URL arguments and --server-pid arguments for strata bench.
declare -A URL_ARGS PID_ARGS

start_distribution() {
  install_distribution
  local port dir="$WORK/distribution" attempt
  mkdir -p "$dir/data"
  for attempt in 1 2 3; do
    port="$(free_port)" || fail "no free port"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
EOF
    OTEL_TRACES_EXPORTER=none OTEL_SDK_DISABLED=true "$REGISTRY_BIN" serve "$dir/config.yml" \
      >"$RESULTS_DIR/distribution.log" 2>&1 &
    local pid=$!
    if wait_v2 "http://127.0.0.1:$port" "$pid" "$RESULTS_DIR/distribution.log"; then
      PIDS_TO_STOP+=("$pid")
      URL_ARGS[distribution]="--url http://127.0.0.1:$port"
      PID_ARGS[distribution]="--server-pid api-registry=$pid"
      say "distribution $("$REGISTRY_BIN" --version 2>/dev/null | head -n 1) on http://127.0.0.1:$port (pid $pid)"
      return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  fail "distribution did not start"
}

start_strata_dev() {
  local port attempt dir="$WORK/strata-dev"
  for attempt in 1 2 3; do
    port="$(free_port)" || fail "no free port"
    rm -rf "$dir"
    "$STRATA_BIN" serve --dev --data-dir "$dir" --http-addr "127.0.0.1:$port" --log-level warn \
      >"$RESULTS_DIR/strata-dev.log" 2>&1 &
    local pid=$!
    if wait_v2 "http://127.0.0.1:$port" "$pid" "$RESULTS_DIR/strata-dev.log"; then
      PIDS_TO_STOP+=("$pid")
      URL_ARGS[strata-dev]="--url http://127.0.0.1:$port"
      PID_ARGS[strata-dev]="--server-pid api-dev=$pid"
      say "strata serve --dev on http://127.0.0.1:$port (pid $pid)"
      return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  fail "strata serve --dev did not start"
}

start_strata_cluster() {
  local dir="$WORK/strata-cluster"
  "$STRATA_BIN" dev cluster --meta 3 --storage 6 --api 2 --dir "$dir" --log-level warn \
    >"$RESULTS_DIR/strata-cluster.log" 2>&1 &
  CLUSTER_PID=$!
  local deadline=$((SECONDS + READY_TIMEOUT))
  until [ -f "$dir/cluster.json" ]; do
    kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$RESULTS_DIR/strata-cluster.log" >&2; fail "strata dev cluster exited"; }
    ((SECONDS < deadline)) || { cat "$RESULTS_DIR/strata-cluster.log" >&2; fail "no cluster.json after ${READY_TIMEOUT}s"; }
    sleep 0.2
  done
  local name pid http urls="" pids=""
  while read -r name pid http; do
    pids+=" --server-pid $name=$pid"
    [ "$http" = "-" ] || urls+=" --url $http"
    case "$name" in storage-s5 | storage-s6) KILL_PIDS+=" $pid" ;; *) SURVIVOR_PIDS+=" --server-pid $name=$pid" ;; esac
  done < <(cluster_nodes "$dir/cluster.json")
  [ -n "$urls" ] || fail "no frontend in $dir/cluster.json"
  URL_ARGS[strata-cluster]="$urls"
  PID_ARGS[strata-cluster]="$pids"
  say "strata dev cluster (3 meta, 6 storage, 2 api; 4+2) in $dir:$urls"
}
KILL_PIDS=""
SURVIVOR_PIDS=""

stop_all() {
  local pid
  for pid in "${PIDS_TO_STOP[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  if [ -n "$CLUSTER_PID" ]; then kill -INT "$CLUSTER_PID" 2>/dev/null || true; fi
  for pid in "${PIDS_TO_STOP[@]}" $CLUSTER_PID; do
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS_TO_STOP=()
  CLUSTER_PID=""
}
cleanup() {
  stop_all
  if [ "${KEEP_DATA:-0}" = 1 ]; then say "kept data in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the machine -------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -sr)"
  echo "go: $(go version 2>/dev/null || echo n/a)"
  echo "strata: $("$STRATA_BIN" version 2>/dev/null || echo n/a)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "disk: $(df -h "$WORK" | awk 'NR==2 {print $1, $2, "size,", $4, "free"}')"
} >"$RESULTS_DIR/machine.txt"
cat "$RESULTS_DIR/machine.txt" >&2

for t in $TARGETS; do
  case "$t" in
    distribution) start_distribution ;;
    strata-dev) start_strata_dev ;;
    strata-cluster) start_strata_cluster ;;
    *) fail "unknown target $t (distribution, strata-dev, strata-cluster)" ;;
  esac
done
read -r -a TARGET_ARR <<<"$TARGETS"

rc=0
# bench TARGET CASE_ID LABEL SPEC METRICS [extra args...]
bench() {
  local target="$1" id="$2" label="$3" spec="$4" metrics="$5" m args=()
  shift 5
  for m in $metrics; do args+=(--metric "$m"); done
  say "$(date +%H:%M:%S) $id on $target"
  # shellcheck disable=SC2086
  if ! "$STRATA_BIN" bench ${URL_ARGS[$target]} ${PID_ARGS[$target]} --target "$target" --case "$label" \
    --scenario "$spec" "${args[@]}" --setup-concurrency 32 --timeout 5m --summary "$@" \
    >>"$RESULTS" 2>"$WORK/bench.err"; then
    say "  $id on $target had errors"
    rc=1
  fi
  # The summary row (and any error) of this run, without the table's header.
  grep -v -e '^$' -e '^scenario ' "$WORK/bench.err" | sed 's/^/    /' >&2 || true
  { echo "== $id on $target"; cat "$WORK/bench.err"; } >>"$RESULTS_DIR/bench.log"
}

started=$SECONDS
i=0
HEALTHY_PULL=""
for entry in "${CASE_LIST[@]}"; do
  IFS='|' read -r id label spec metrics <<<"$entry"
  if [ "$CASES" != all ] && [[ ",$CASES," != *",$id,"* ]]; then continue; fi
  n=${#TARGET_ARR[@]}
  for ((j = 0; j < n; j++)); do
    t="${TARGET_ARR[$(((i + j) % n))]}"
    bench "$t" "$id" "$label" "$spec" "$metrics"
  done
  if [ "$id" = pull-unchecked ]; then HEALTHY_PULL="$label|$spec"; fi
  i=$((i + 1))
done

if [ "$DEGRADED" = 1 ] && [ -n "${URL_ARGS[strata-cluster]:-}" ] && [ -n "$HEALTHY_PULL" ]; then
  IFS='|' read -r label spec <<<"$HEALTHY_PULL"
  say "$(date +%H:%M:%S) pull-unchecked on strata-cluster with storage nodes s5 and s6 killed (SIGKILL after the setup)"
  PID_ARGS[strata-cluster-2-down]="$SURVIVOR_PIDS"
  URL_ARGS[strata-cluster-2-down]="${URL_ARGS[strata-cluster]}"
  bench strata-cluster-2-down pull-unchecked "$label" "$spec" "mb_per_s:0.7" --before-run "kill -KILL$KILL_PIDS; sleep 1"
fi
say "runs took $((SECONDS - started))s"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS_DIR/machine.txt"

{
  echo "## Ratios to Distribution $DISTRIBUTION_VERSION"
  echo
  grep -v '"target":"strata-cluster-2-down"' "$RESULTS" | "$STRATA_BIN" bench report --baseline distribution
  if grep -q '"target":"strata-cluster-2-down"' "$RESULTS"; then
    echo
    echo "## Reads with m = 2 storage nodes down, relative to the healthy cluster (goal ≥ 0.7×)"
    echo
    # The healthy run's goal is a ratio to Distribution: drop it here.
    grep -E '"target":"strata-cluster(-2-down)?"' "$RESULTS" | grep '"scenario":"pull-distinct"' |
      sed '/"target":"strata-cluster"/s/,"metrics":\[[^]]*\]//' |
      "$STRATA_BIN" bench report --baseline strata-cluster
  fi
} >"$RESULTS_DIR/report.md"
echo
cat "$RESULTS_DIR/report.md"
echo
say "results in $RESULTS_DIR (results.jsonl, report.md, machine.txt, logs)"
exit "$rc"
