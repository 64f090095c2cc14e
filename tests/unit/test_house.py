"""The house rules, checked: small files and functions, one version, and docs that say what the specs do.

Known exceptions are listed here by name, so a new long file or function fails this test instead of
slipping in, and shortening one of the listed ones is noticed too (the list must stay exact).
"""

import ast
import json
import os
import subprocess

import pytest
import yaml

from ansible_collections.segura.backup.plugins.module_utils._engine import constants, specs
from tests.conftest import COLLECTIONS, ROOT

ENGINE = os.path.join(ROOT, "plugins", "module_utils", "_engine")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60

# Debt, to be split when next touched (one target driver, and the long step-by-step procedures).
LONG_FILES = {"targets/smb.py"}
LONG_FUNCTIONS = {
    "retention.py:plan",
    "snapshot.py:take_snapshot",
    "catalog/sidecar.py:from_dict",
    "restore/apply.py:restore",
    "restore/plan.py:_plan",
}


def _engine_files():
    for folder, _dirs, files in os.walk(ENGINE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ENGINE), path


def test_engine_files_stay_short():
    long_files = set()
    for relative, path in _engine_files():
        with open(path, encoding="utf-8") as handle:
            if sum(1 for _line in handle) > MAX_FILE_LINES:
                long_files.add(relative)
    assert long_files == LONG_FILES


def test_engine_functions_stay_short():
    long_functions = set()
    for relative, path in _engine_files():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.add("%s:%s" % (relative, node.name))
    assert long_functions == LONG_FUNCTIONS


def test_the_engine_reports_the_collection_version():
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        assert constants.TOOL_VERSION == yaml.safe_load(handle)["version"]


MODULE_SPECS = {
    "appliance_info": specs.appliance_info_spec,
    "backup_info": specs.backup_info_spec,
    "backup_job": specs.backup_job_spec,
    "break_lock": specs.break_lock_spec,
    "prune": specs.prune_spec,
    "restore": specs.restore_spec,
    "snapshot": specs.snapshot_spec,
    "verify": specs.verify_spec,
}


@pytest.fixture(scope="module")
def module_docs():
    """Every module's documentation as ansible-doc renders it (fragments merged in)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS)
    names = ["segura.backup.%s" % name for name in sorted(MODULE_SPECS)]
    output = subprocess.run(["ansible-doc", "--json", "-t", "module"] + names, env=env, check=True,
                            stdout=subprocess.PIPE, timeout=120).stdout
    return {name.rsplit(".", 1)[1]: doc["doc"] for name, doc in json.loads(output).items()}


def _differences(spec, documented, where=""):
    """Each option whose name, type, default, choices or requiredness differ between spec and docs."""
    found = []
    for name in sorted(set(spec) | set(documented)):
        path = where + name
        if name not in documented or name not in spec:
            found.append("%s: only in the %s" % (path, "spec" if name in spec else "documentation"))
            continue
        code, doc = spec[name], documented[name]
        for key, fallback in (("type", "str"), ("default", None), ("choices", None), ("elements", None),
                              ("required", False)):
            if code.get(key, fallback) != doc.get(key, fallback):
                found.append("%s: %s is %r in the spec, %r in the docs" % (path, key, code.get(key, fallback),
                                                                           doc.get(key, fallback)))
        if code.get("options") or doc.get("suboptions"):
            found += _differences(code.get("options") or {}, doc.get("suboptions") or {}, path + ".")
    return found


@pytest.mark.parametrize("module", sorted(MODULE_SPECS))
def test_documentation_matches_the_argument_spec(module, module_docs):
    assert _differences(MODULE_SPECS[module](), module_docs[module]["options"]) == []
