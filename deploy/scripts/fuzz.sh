#!/usr/bin/env bash
# fuzz.sh - run every native Go fuzz target (func FuzzXxx(f *testing.F)) in the module,
# one after another, for FUZZTIME each. Crashers land in the package's testdata/fuzz/
# and become seed corpus entries that plain `go test` replays from then on.
#
# Environment: FUZZTIME (default 30s), GO (default go), FUZZ_PKGS (directories to
# search instead of the whole module, space separated).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GO="${GO:-go}"
FUZZTIME="${FUZZTIME:-30s}"

# Directories whose test files declare a fuzz target; `go test -list` confirms the names.
mapfile -t dirs < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' ${FUZZ_PKGS:-.} 2>/dev/null \
  | grep -v '^\./bin/' | xargs -r -n1 dirname | sort -u)

passed=0
failed=()
for d in "${dirs[@]}"; do
  case "$d" in ./*) ;; *) d="./$d" ;; esac
  mapfile -t targets < <("$GO" test -list '^Fuzz' "$d" | grep -E '^Fuzz')
  for t in "${targets[@]}"; do
    echo "== fuzz $d $t for $FUZZTIME"
    if "$GO" test -run '^$' -fuzz "^${t}\$" -fuzztime "$FUZZTIME" "$d"; then
      passed=$((passed + 1))
    else
      failed+=("$d $t")
    fi
  done
done

if [ "$((passed + ${#failed[@]}))" -eq 0 ]; then
  echo "fuzz: no Fuzz* targets found"
  exit 0
fi
for f in "${failed[@]}"; do echo "FAILED: $f"; done
echo "fuzz: ${passed} passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
