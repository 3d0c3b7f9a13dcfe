#!/usr/bin/env bash
# test-summary.sh LOG: after a failed `go test ./...`, repeat at the end of
# the output what failed: the tests a timeout caught running (Go prints them
# before a goroutine dump thousands of lines long, which a CI log's tail
# loses), each --- FAIL line with the message under it, and the FAIL lines
# of packages.
set -uo pipefail
log="${1:?usage: test-summary.sh LOG}"
echo
echo "=== go test failed; summary of $log"
awk '
  /^panic: test timed out/ { timeout = 1; print; next }
  timeout && /^running tests:/ { print; next }
  timeout && /^\t/ { print; next }
  timeout { timeout = 0 }
  /^[ \t]*--- FAIL/ { fail = 1; print; next }
  fail && /^[ \t]+[^ \t-]/ && n < 8 { print; n++; next }
  { fail = 0; n = 0 }
  /^FAIL[ \t]/ { print }
' "$log"
