"""segura.backup.appliance_info: on the lab's reference appliance (localhost, its own MariaDB) and on the two
podman appliance containers over SSH (primary vs contingency, from Segura's health endpoint and, without a
database connection, from galera.cnf: the containers' servers run no Galera). The containers part runs with
`-m containers`.
"""

import os

import pytest

from tests.integration.playbook import run_task
# fleet: the pytest fixture of the appliance container pair, used by name.
from tests.integration.test_roles import HEALTH_URL, _stats_artifact, fleet  # noqa: F401  pylint: disable=unused-import


def _tree(path):
    total = files = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            if os.path.isfile(full) and not os.path.islink(full):
                total += os.path.getsize(full)
                files += 1
    return total, files


def _args(appliance):
    return {"appliance": {"name": appliance["name"], "root": appliance["root"]},
            "database": {"defaults_file": appliance["defaults_file"]}}


def test_reference_appliance_facts(reference_appliance):
    result = run_task("segura.backup.appliance_info", _args(reference_appliance))
    assert not result.failed, result.output
    assert result.result["changed"] is False
    facts = result.result["appliance"]
    assert facts["name"] == reference_appliance["name"]
    root = reference_appliance["root"]
    assert (facts["paths"]["secrets"]["bytes"], facts["paths"]["secrets"]["files"]) == _tree(
        os.path.join(root, "srv/cache/coba"))
    assert (facts["paths"]["sessions"]["bytes"], facts["paths"]["sessions"]["files"]) == _tree(
        os.path.join(root, "var/senhasegura/arz"))
    databases = facts["mariadb"]["databases"]
    assert set(databases) == {"mt4", "senhasegura"}
    assert all(db["exists"] and db["data_bytes"] > 0 for db in databases.values())
    # the reference appliance's galera.cnf has wsrep_on=ON, but the lab's MariaDB runs without wsrep: a lone
    # node, the primary, and no warning (the demo's first run shows no false Galera alarm)
    assert facts["cluster"] == {"role": "standalone", "is_primary": True, "source": "server", "cluster_size": 0}
    assert "health URL" not in result.output and "Galera" not in result.output
    assert facts["var"]["bytes_used"] + facts["var"]["bytes_free"] <= facts["var"]["bytes_total"]
    assert facts["estimate"]["snapshot_bytes"] >= facts["paths"]["secrets"]["bytes"]
    assert isinstance(facts["mounts"], list)


def test_check_mode_gives_the_same_facts(reference_appliance):
    normal = run_task("segura.backup.appliance_info", _args(reference_appliance))
    checked = run_task("segura.backup.appliance_info", _args(reference_appliance), check=True)
    assert not checked.failed, checked.output
    assert checked.result["appliance"]["paths"] == normal.result["appliance"]["paths"]
    assert checked.result["appliance"]["mariadb"] == normal.result["appliance"]["mariadb"]


def test_bad_database_credentials_fail_with_one_message(reference_appliance, tmp_path):
    wrong = tmp_path / "wrong.cnf"
    wrong.write_text("[client]\nuser=root\npassword=not-the-password\nport=%d\nhost=127.0.0.1\n"
                     % reference_appliance["mysql_port"])
    os.chmod(str(wrong), 0o600)
    result = run_task("segura.backup.appliance_info", {"appliance": {"root": reference_appliance["root"]},
                                                       "database": {"defaults_file": str(wrong)}})
    assert result.failed
    assert "Access denied" in result.result["msg"] and "not-the-password" not in result.output
    skipped = run_task("segura.backup.appliance_info", {"appliance": {"root": reference_appliance["root"]},
                                                        "database": {"defaults_file": str(wrong)},
                                                        "gather_database": False})
    assert not skipped.failed and "mariadb" not in skipped.result["appliance"]


@pytest.mark.containers
def test_primary_and_contingency_containers(fleet):
    inventory = fleet.inventory()
    playbook = os.path.join(fleet.workdir, "info.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        handle.write(
            "- hosts: segura_appliances\n  gather_facts: false\n  tasks:\n"
            "    - segura.backup.appliance_info:\n        appliance: {health_url: '%s'}\n      register: by_health\n"
            "    - segura.backup.appliance_info:\n        gather_database: false\n      register: by_galera\n"
            "    - ansible.builtin.set_stats:\n        data:\n"
            "          roles: \"{{ {inventory_hostname: [by_health.appliance.cluster, by_galera.appliance.cluster,"
            " by_health.appliance.appliance_version, by_health.appliance.mariadb.databases.keys() | list]} }}\"\n"
            % HEALTH_URL)
    runner, _seconds = fleet.run(playbook, inventory)
    assert runner.rc == 0
    roles = _stats_artifact(runner)["roles"]
    health, galera, version, databases = roles[fleet.primary["name"]]
    assert (health["role"], health["is_primary"], health["status"]) == ("primary", True, 200)
    assert (galera["role"], galera["is_primary"]) == ("standalone", True)
    assert version == "3.32.0" and sorted(databases) == ["mt4", "senhasegura"]
    health, galera, _version, _databases = roles[fleet.contingency["name"]]
    assert (health["role"], health["is_primary"], health["status"]) == ("secondary", False, 203)
    assert (galera["role"], galera["is_primary"]) == ("cluster_member", None)
