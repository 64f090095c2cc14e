#!/usr/bin/env bash
# The whole test suite (make test, and so CI): static checks, then every pytest suite against the real
# lab (Samba, nfs-ganesha, MariaDB), which this script brings up and takes down again.
# Every step runs even when an earlier one failed; the exit status says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections"
failed=()
step() {  # step NAME COMMAND...: run one step, remember a failure, keep going
  local name=$1; shift
  echo "=== $name"
  local start=$SECONDS
  "$@"
  local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

build_has_no_test_junk() {
  rm -rf .build/dist
  ansible-galaxy collection build --force --output-path .build/dist . >/dev/null || return 1
  local junk
  junk=$(tar -tzf .build/dist/segura-backup-*.tar.gz | grep -E '^(tests|extensions|\.ansible|benchmarks|scripts|\.lab|\.build|\.venv|\.ci)/' || true)
  [ -z "$junk" ] || { echo "collection tarball contains test or lab files:"; echo "$junk"; return 1; }
  echo "built $(ls .build/dist)"
}

step "lint (ruff, mypy)" bash scripts/lint.sh
step "ansible-test sanity" bash scripts/sanity.sh
step "ansible-lint" ansible-lint --offline -q
step "collection build" build_has_no_test_junk
# Stop the lab at the end only if this run started it (a developer's running lab stays up).
if python -m tests.lab status >/dev/null 2>&1; then
  echo "=== lab already running: it stays up afterwards"
else
  trap 'python -m tests.lab down >/dev/null 2>&1; python -m tests.lab.containers down >/dev/null 2>&1' EXIT
fi
step "lab up" python -m tests.lab up
# No test collected, or a skip not on the allow-list, fails this step (scripts/pytest_gate.py).
step "pytest" python scripts/pytest_gate.py --junit .build/junit.xml tests
# Molecule scenarios (extensions/molecule): appliance containers and the kernel-mount VM against the lab
# started above; the appliance image is built (or reused from the cache) by the scenarios themselves.
step "molecule" bash scripts/molecule.sh

python - <<'PY'
import xml.etree.ElementTree as ET
try:
    suite = ET.parse(".build/junit.xml").getroot()
except (OSError, ET.ParseError):
    raise SystemExit(0)
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
total, fail, err, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print("pytest totals: %d passed, %d failed, %d skipped" % (total - fail - err - skip, fail + err, skip))
PY
if [ "${#failed[@]}" -gt 0 ]; then
  echo "make test: FAILED steps: ${failed[*]}"
  exit 1
fi
echo "make test: all steps passed"
