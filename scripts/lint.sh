#!/usr/bin/env bash
# Lint and type gate (a step of make test): ruff on the whole tree, mypy on the private engine.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
rc=0
ruff check . || rc=1
# The engine imports itself as ansible_collections.segura.backup; tests/conftest.py makes that symlink.
python -c "import tests.conftest" || exit 1
(cd .build/collections && mypy --config-file "$root/mypy.ini" -p ansible_collections.segura.backup.plugins.module_utils._engine) || rc=1
exit "$rc"
