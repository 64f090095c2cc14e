#!/usr/bin/env bash
# Run every molecule scenario (extensions/molecule/*) with `molecule test`, one after the other; print each
# scenario's wall time and a closing pass/fail line; exit non-zero if any failed.
# Usage: scripts/molecule.sh [SCENARIO...]   (default: every scenario). Needs `make setup` done.
# The lab (smbd, ganesha, MariaDB) is started if it is not running, and then stopped again at the end.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections" ANSIBLE_NOCOLOR=1 NO_COLOR=1

if [ "$#" -gt 0 ]; then
  scenarios=("$@")
else
  scenarios=()
  for file in extensions/molecule/*/molecule.yml; do scenarios+=("$(basename "$(dirname "$file")")"); done
fi

if ! python -m tests.lab status >/dev/null 2>&1; then
  trap 'python -m tests.lab down >/dev/null 2>&1' EXIT
  python -m tests.lab up >/dev/null || { echo "molecule: the lab did not start"; exit 1; }
fi

passed=0
failed=()
times=()
for scenario in "${scenarios[@]}"; do
  echo "=== molecule test -s $scenario"
  start=$SECONDS
  molecule test -s "$scenario"
  rc=$?
  times+=("$scenario $((SECONDS - start)) s (exit $rc)")
  if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed+=("$scenario"); fi
done

echo "=== molecule scenario times"
printf '  %s\n' "${times[@]}"
[ "${#failed[@]}" -eq 0 ] || echo "molecule: failed scenarios: ${failed[*]}"
echo "molecule: ${passed} passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
