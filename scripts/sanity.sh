#!/usr/bin/env bash
# ansible-test sanity on a copy of the collection at .build/sanity/ansible_collections/segura/backup
# (ansible-test needs that path layout; --local uses the project venv because --venv would download).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="$root/.venv/bin:$PATH"

# ansible-test downloads a pip bootstrap script from a host we cannot reach: give it our stand-in.
requirements_py=$(echo "$root"/.venv/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py)
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',.*/\1/p" "$requirements_py" | head -n 1)
mkdir -p ~/.ansible/test/cache
# pip in ansible-test's own venvs does not see the machine's pip config: pass its CA bundle and index on.
for key in cert index-url extra-index-url trusted-host; do
  value=$(pip config get "global.$key" 2>/dev/null || true)
  [ -z "$value" ] || export "PIP_$(echo "$key" | tr a-z- A-Z_)=$value"
done
cp scripts/get_pip_standin.py ~/.ansible/test/cache/get_pip_"${pip_version//./_}".py

# A private copy per run, so two runs at once do not trip over each other.
mkdir -p .build
copy=$(mktemp -d "$root/.build/sanity.XXXXXX")
trap 'rm -rf "$copy"' EXIT
dest=$copy/ansible_collections/segura/backup
mkdir -p "$dest"
# The files git tracks or would track, as they are in the work tree.
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$dest"
cd "$dest"
git init -q . && git add -A >/dev/null   # ansible-test lists the files to test through git
python_version=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ansible-test sanity --local --python "$python_version" --color no "$@"
