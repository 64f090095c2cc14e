"""The docs say what the project holds: their example playbooks pass `ansible-playbook --syntax-check` against
the installed collection, and every project file they name exists.

Read: README.md, docs/**/*.md, roles/*/README.md (fenced ```yaml blocks that are plays or tasks; relative
links; paths), the modules' EXAMPLES (tasks, wrapped in a play) and DOCUMENTATION/RETURN text, the doc
fragments, the playbooks' and the roles' defaults comments (paths). A path counts as a project path when
its first folder exists in one of the folders it may be relative to (the repository, the doc's own folder,
the engine for the engine's parts, the role for a role's files): `roles/x/...`, `docs/x.md`,
`restore/plan.py`. Other slashed words (SMB/NFS, a snapshot's `db/facts.json`, `/etc/...`) are not.

All example plays go to one ansible-playbook run (about a second each); only when it fails are they
checked one by one, to name the ones that broke.
"""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import COLLECTIONS, ROOT

ENGINE = os.path.join(ROOT, "plugins", "module_utils", "_engine")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

# Paths that exist only once `make` has run (generated, never committed): named here so a doc may cite them.
GENERATED = (
    ".lab/",  # the lab's state (tests/lab)
    ".build/",  # collections symlink, sanity copies, built tarball, molecule state
    ".venv/",  # the project's virtualenv (scripts/setup.sh)
)
PATH_TOKEN = re.compile(r"(?<![\w./$~-])(\.?[A-Za-z0-9_][\w.+-]*(?:/[\w.+-]*)+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
BARE_FILE = re.compile(r"`([\w.-]+\.(?:txt|toml|cfg|ini))`|(?<![\w./-])([\w.-]+\.(?:rst|md))\b")
# A source file named without its folder (`test_kill_matrix.py`, "service.j2"): some file of the project has that name.
BARE_SOURCE = re.compile(r"(?<![\w./<$-])([A-Za-z_][\w-]*\.(?:py|sh|j2|yml|yaml))\b(?!/)")


def _markdown_docs():
    paths = [os.path.join(ROOT, "README.md")]
    paths += sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    paths += sorted(glob.glob(os.path.join(ROOT, "roles", "*", "README.md")))
    return paths


def _module_docs():
    """{path: {"DOCUMENTATION": text, "EXAMPLES": text, "RETURN": text}} of modules and doc fragments."""
    found = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))
                       + glob.glob(os.path.join(ROOT, "plugins", "doc_fragments", "*.py"))):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        texts = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                        texts[target.id] = node.value.value
        found[path] = texts
    return found


def _yaml_comments(path):
    with open(path, encoding="utf-8") as handle:
        return "\n".join(line.split("#", 1)[1] for line in handle if "#" in line)


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _bases(doc_path):
    """Folders a path in this doc may be relative to."""
    bases = [ROOT, os.path.dirname(doc_path), ENGINE]
    relative = os.path.relpath(doc_path, ROOT).split(os.sep)
    if relative[0] == "roles" and len(relative) > 2:
        bases.append(os.path.join(ROOT, "roles", relative[1]))
    return bases


_NAMES = []


def _project_file_names():
    """Base names of the project's files (generated folders left out), read once."""
    if not _NAMES:
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [name for name in dirs if name not in (".git", ".venv", ".build", ".lab", "__pycache__")]
            _NAMES.extend(files)
    return set(_NAMES)


def _exists(path):
    """The path exists, or names a definition in a Python file: `appliance/tablefacts.FactsSession`."""
    if os.path.exists(path):
        return True
    module, _dot, name = os.path.basename(path).partition(".")
    source = os.path.join(os.path.dirname(path), module + ".py")
    if not name or not os.path.isfile(source):
        return False
    return re.search(r"^\s*(?:def|class)\s+%s\b|^%s\s*=" % (re.escape(name), re.escape(name)), _read(source), re.M) is not None


def _missing_paths(doc_path, text):
    """Project paths named in text that do not exist."""
    missing = []
    for match in PATH_TOKEN.finditer(text):
        token = match.group(1).rstrip(".,:;")
        if token.startswith(GENERATED) or any(mark in text[match.end():match.end() + 1] for mark in "<*{$"):
            continue  # generated, or a pattern (`results/<date>-...`, `db/dump.sql.*`)
        first = token.split("/")[0]
        candidates = [base for base in _bases(doc_path) if first and os.path.isdir(os.path.join(base, first))]
        if candidates and not any(_exists(os.path.join(base, token)) for base in candidates):
            missing.append(token)
    for match in BARE_SOURCE.finditer(text):
        if match.group(1) not in _project_file_names():
            missing.append(match.group(1))
    for match in BARE_FILE.finditer(text):
        name = match.group(1) or match.group(2)
        if name not in GENERATED and not any(os.path.exists(os.path.join(base, name)) for base in _bases(doc_path)):
            missing.append(name)
    return missing


def _doc_texts():
    """(doc path, text to check for paths) of every doc."""
    for path in _markdown_docs():
        yield path, _read(path)
    for path, texts in _module_docs().items():
        yield path, "\n".join(texts.values())
    for path in sorted(glob.glob(os.path.join(ROOT, "playbooks", "*.yml"))
                       + glob.glob(os.path.join(ROOT, "roles", "*", "defaults", "*.yml"))
                       + glob.glob(os.path.join(ROOT, "roles", "*", "tasks", "*.yml"))):
        yield path, _yaml_comments(path)


def test_every_project_path_a_doc_names_exists():
    problems = []
    for path, text in _doc_texts():
        for token in _missing_paths(path, text):
            problems.append("%s names %s, which does not exist" % (os.path.relpath(path, ROOT), token))
    assert not problems, "\n".join(problems)


def test_every_relative_link_in_the_markdown_docs_exists():
    problems = []
    for path in _markdown_docs():
        for match in LINK.finditer(_read(path)):
            link = match.group(1).split("#", 1)[0]
            if not link or re.match(r"^[a-z]+:", link):
                continue  # an anchor in the same page, or a URL
            if not os.path.exists(os.path.join(os.path.dirname(path), link)):
                problems.append("%s links to %s, which does not exist" % (os.path.relpath(path, ROOT), link))
    assert not problems, "\n".join(problems)


def _collection_names():
    """What `segura.backup.<name>` may name: a module, role, playbook, doc fragment or action group."""
    names = {"plugins"}  # the engine's import path, ansible_collections.segura.backup.plugins...
    for pattern in ("plugins/modules/*.py", "plugins/doc_fragments/*.py", "playbooks/*.yml"):
        names.update(os.path.splitext(os.path.basename(path))[0] for path in glob.glob(os.path.join(ROOT, pattern)))
    names.update(os.path.basename(path) for path in glob.glob(os.path.join(ROOT, "roles", "*")))
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        names.update((yaml.safe_load(handle) or {}).get("action_groups", {}))
    return names


def test_every_collection_name_a_doc_uses_exists():
    """`segura.backup.verify`, `P(segura.backup.backup#role)`, `group/segura.backup.target`: each names something."""
    known = _collection_names()
    problems = []
    for path, text in _doc_texts():
        for name in sorted(set(re.findall(r"segura\.backup\.([a-z_]+)", text)) - known):
            problems.append("%s names segura.backup.%s, which the collection does not have" % (
                os.path.relpath(path, ROOT), name))
    assert not problems, "\n".join(problems)


def _as_play(data):
    """A playbook for the YAML of an example: plays as they are, a task list wrapped in a play, else None."""
    if not isinstance(data, list) or not data or not all(isinstance(item, dict) for item in data):
        return None
    if all("hosts" in item or "import_playbook" in item for item in data):
        return data
    if any("hosts" in item for item in data):
        return data  # a mix: let ansible say what is wrong
    return [{"name": "Example", "hosts": "all", "gather_facts": False, "tasks": data}]


def example_playbooks():
    """[(label, playbook data)] of every example play and task list in the docs and the modules' EXAMPLES."""
    found = []
    for path in _markdown_docs():
        text = _read(path)
        for match in FENCE.finditer(text):
            if match.group(1) not in ("yaml", "yml"):
                continue
            label = "%s, block at line %d" % (os.path.relpath(path, ROOT), text[:match.start()].count("\n") + 1)
            try:
                data = yaml.safe_load(match.group(2))
            except yaml.YAMLError as exc:
                found.append((label, exc))
                continue
            play = _as_play(data)
            if play is not None:
                found.append((label, play))
    for path, texts in _module_docs().items():
        if "EXAMPLES" in texts:
            label = "%s EXAMPLES" % os.path.relpath(path, ROOT)
            try:
                play = _as_play(yaml.safe_load(texts["EXAMPLES"]))
            except yaml.YAMLError as exc:
                play = exc
            found.append((label, play if play is not None else ValueError("not a list of tasks")))
    return found


def _syntax_check(workdir, files):
    inventory = os.path.join(workdir, "inventory.ini")
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write("[segura_appliances]\nappliance-1 ansible_connection=local\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=os.path.join(workdir, "tmp"), ANSIBLE_HOME=os.path.join(workdir, "home"))
    return subprocess.run([ANSIBLE_PLAYBOOK, "--syntax-check", "-i", inventory] + files, env=env, cwd=workdir,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False)


def test_every_example_playbook_passes_syntax_check(tmp_path):
    examples = example_playbooks()
    assert len(examples) >= 10, examples  # the modules' EXAMPLES alone are more: the finder works
    problems = ["%s: %s" % (label, play) for label, play in examples if isinstance(play, Exception)]
    files = {}
    for number, (label, play) in enumerate(examples):
        if isinstance(play, Exception):
            continue
        path = str(tmp_path / ("example-%02d.yml" % number))
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(play, handle, sort_keys=False)
        files[path] = label
    together = _syntax_check(str(tmp_path), list(files))
    if together.returncode != 0:  # name every example that fails, not only the first
        for path, label in files.items():
            alone = _syntax_check(str(tmp_path), [path])
            if alone.returncode != 0:
                problems.append("%s:\n%s" % (label, alone.stdout.decode("utf-8", "replace")[-1500:]))
        problems = problems or ["the run over all examples failed:\n%s" % together.stdout.decode()[-3000:]]
    assert not problems, "\n\n".join(problems)


def _module_specs():
    """{module name: its argument spec}, from the spec function each module passes to AnsibleModule."""
    from ansible_collections.segura.backup.plugins.module_utils._engine import specs  # pylint: disable=import-outside-toplevel
    found = {}
    for path in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")):
        match = re.search(r"argument_spec=(\w+)\(\)", _read(path))
        if match:
            found[os.path.splitext(os.path.basename(path))[0]] = getattr(specs, match.group(1))()
    return found


def _unknown_options(args, spec, where):
    """Option names in args (a module's arguments) that spec does not have, with their path."""
    unknown = []
    for key, value in args.items():
        entry = spec.get(key) or next((e for e in spec.values() if key in e.get("aliases", ())), None)
        if entry is None:
            unknown.append(where + key)
            continue
        children = entry.get("options")
        if children and isinstance(value, dict):
            unknown += _unknown_options(value, children, "%s%s." % (where, key))
        elif children and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    unknown += _unknown_options(item, children, "%s%s[]." % (where, key))
    return unknown


def _tasks(items):
    for task in items or []:
        if isinstance(task, dict):
            yield task
            for key in ("block", "rescue", "always"):
                yield from _tasks(task.get(key))


def test_every_example_uses_options_the_module_has():
    """--syntax-check does not look at a module's options: a renamed or removed option is caught here."""
    module_specs = _module_specs()
    assert {"snapshot", "verify", "restore"} <= set(module_specs)
    problems = []
    for label, plays in example_playbooks():
        for play in plays if isinstance(plays, list) else []:
            for task in _tasks(play.get("tasks")) if isinstance(play, dict) else []:
                for key, args in task.items():
                    name = key[len("segura.backup."):] if key.startswith("segura.backup.") else None
                    if name in module_specs and isinstance(args, dict):
                        problems += ["%s: %s has no option %s" % (label, key, option)
                                     for option in _unknown_options(args, module_specs[name], "")]
    assert not problems, "\n".join(problems)


ROLE_PREFIXES = ("backup_", "restore_", "schedule_", "mount_", "runtime_", "verify_", "setup_")


def test_every_role_variable_the_examples_set_is_read_somewhere():
    """The example inventory and the docs' variable blocks set only variables a role or playbook reads."""
    used = "\n".join(_read(path) for pattern in ("roles/*/*/*.yml", "roles/*/templates/*", "playbooks/*.yml")
                     for path in glob.glob(os.path.join(ROOT, pattern)))
    sources = []
    for path in glob.glob(os.path.join(ROOT, "docs", "examples", "inventory", "*_vars", "**", "*.yml"), recursive=True):
        data = yaml.safe_load(_read(path).replace("!vault", ""))
        if isinstance(data, dict):  # a wholly vaulted file is one string
            sources.append((path, data))
    for path in _markdown_docs():
        for match in FENCE.finditer(_read(path)):
            if match.group(1) in ("yaml", "yml"):
                data = yaml.safe_load(match.group(2))
                if isinstance(data, dict):
                    sources.append((path, data))
    assert sources
    problems = ["%s sets %s, which no role or playbook reads" % (os.path.relpath(path, ROOT), name)
                for path, data in sources for name in data
                if name.startswith(ROLE_PREFIXES) and not re.search(r"\b%s\b" % re.escape(name), used)]
    assert not problems, "\n".join(problems)


def test_each_role_documents_its_defaults_as_they_are():
    """roles/*/meta/argument_specs.yml (what ansible-doc shows) names every default of defaults/main.yml, with
    the same value where the default is a plain value (a templated one is described in words)."""
    problems = []
    for role in sorted(glob.glob(os.path.join(ROOT, "roles", "*"))):
        defaults_file = os.path.join(role, "defaults", "main.yml")
        defaults = yaml.safe_load(_read(defaults_file)) if os.path.exists(defaults_file) else {}
        spec = yaml.safe_load(_read(os.path.join(role, "meta", "argument_specs.yml")))["argument_specs"]["main"]
        options = spec.get("options", {})
        for name, value in (defaults or {}).items():
            templated = isinstance(value, str) and "{{" in value
            if name not in options:
                problems.append("%s: %s has a default but no entry in argument_specs" % (os.path.basename(role), name))
            elif not templated and "default" in options[name] and options[name]["default"] != value:
                problems.append("%s: %s defaults to %r, argument_specs says %r"
                                % (os.path.basename(role), name, value, options[name]["default"]))
    assert not problems, "\n".join(problems)


def test_the_example_inventory_loads_with_its_vault(tmp_path):
    """docs/examples: the inventory parses, its vault opens with the example's password, and every vault_*
    variable its group_vars use is defined there."""
    examples = os.path.join(ROOT, "docs", "examples")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_HOME=str(tmp_path / "home"))
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "--list",
                             "-i", os.path.join(examples, "inventory"),
                             "--vault-password-file", os.path.join(examples, "demo-vault-password.txt")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    hostvars = yaml.safe_load(result.stdout)["_meta"]["hostvars"]
    assert len(hostvars) >= 2
    used = set(re.findall(r"\b(vault_\w+)", "".join(
        _read(path) for path in glob.glob(os.path.join(examples, "inventory", "group_vars", "*", "main.yml")))))
    assert used, "the example no longer uses a vaulted variable"
    for host, values in hostvars.items():
        assert used <= set(values), "%s lacks %s" % (host, sorted(used - set(values)))


@pytest.mark.parametrize("text, expected", [
    ("see `roles/schedule/templates/segura-backup.service.j2`", ["roles/schedule/templates/segura-backup.service.j2"]),
    ("see roles/schedule/templates/service.j2 and docs/awx.md", []),
    ("SMB/NFS, and/or a snapshot's db/facts.json, /etc/passwd, ../x", []),
    ("`appliance/tablefacts.FactsSession`, `targets/__init__.open_target`", []),
    ("`appliance/tablefacts.NoSuchThing`", ["appliance/tablefacts.NoSuchThing"]),
    ("results go to benchmarks/results/<date>.md and db/dump.sql.*", []),
    ("[the guide](docs/nope.md)", ["docs/nope.md"]),
    ("a change from DESIGN.md's first idea; see `requirements.txt`", ["DESIGN.md"]),
    ("test_kill_matrix.py drives kill_driver.py; the unit is service.j2", []),
    ("see test_no_such_suite.py", ["test_no_such_suite.py"]),
])
def test_the_path_finder(text, expected):
    """The finder itself: real paths pass, a missing one is named, words with a slash are left alone."""
    assert _missing_paths(os.path.join(ROOT, "README.md"), text) == expected
