# lib.sh - shell functions shared by the scripts in deploy/scripts (sourced, not run).

# cluster_nodes prints "name pid http" per node of a `strata dev cluster` cluster.json
# (name: api-a1, meta-m1, storage-s1; http "-" for nodes without a frontend), without
# needing jq.
cluster_nodes() {
  awk '
    /"id":/    { v = $2; gsub(/[",]/, "", v); id = v; roles = ""; http = "-" }
    /"roles":/ { inroles = 1; next }
    inroles && /\]/ { inroles = 0; next }
    inroles    { v = $0; gsub(/[ ",]/, "", v); roles = roles " " v; next }
    /"pid":/   { v = $2; gsub(/,/, "", v); pid = v }
    /"http":/  { v = $2; gsub(/[",]/, "", v); http = v }
    /"grpc":/  {
      kind = roles ~ /api/ ? "api" : (roles ~ /meta/ ? "meta" : "storage")
      print kind "-" id, pid, http
    }' "$1"
}

# bench_setup NAME: checks STRATA_BIN and curl, creates RESULTS_DIR and an empty
# RESULTS (results.jsonl in it), exiting 2 with a message naming the script NAME.
bench_setup() {
  [ -x "$STRATA_BIN" ] || { echo "$1: no strata binary at $STRATA_BIN (make build)" >&2; exit 2; }
  command -v curl >/dev/null || { echo "$1: curl is required" >&2; exit 2; }
  mkdir -p "$RESULTS_DIR"
  RESULTS="$RESULTS_DIR/results.jsonl"
  : >"$RESULTS"
}

# free_port prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}
