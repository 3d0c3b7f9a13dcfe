# bench-lib.sh - shell functions shared by the bench-*.sh scripts (sourced, not run).

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
