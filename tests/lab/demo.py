# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo's inventory: one local lab appliance backed up to the lab's encrypted SMB share.

    python -m tests.lab.demo inventory --appliance-root DIR --recipients FILE   YAML on stdout
    python -m tests.lab.demo key NAME                                          one value of the lab env

The inventory holds the lab share's password (a lab secret, never a real one); demo.sh writes it 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tests.lab import core
from tests.lab.__main__ import build_services, merged_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lab_env() -> dict:
    state = core.resolve_state_dir(None)
    return merged_env(build_services(state, []), state)


def inventory(appliance_root: str, recipients_file: str) -> dict:
    env = lab_env()
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": os.path.join(REPO, ".venv", "bin", "python"),
        "backup_appliance": {"name": "lab-appliance", "root": os.path.abspath(appliance_root)},
        "backup_database": {"defaults_file": env["mysql_defaults_file"]},
        "backup_components": ["database", "config", "secrets", "sessions"],
        "backup_encryption": {"recipients_file": os.path.abspath(recipients_file)},
        "backup_target": {
            "type": "smb",
            "server": env["smb_server"],
            "port": int(env["smb_port"]),
            "share": env["smb_share_encrypted"],
            "path": "segura",
            "username": env["smb_username"],
            "password": env["smb_password"],
        },
    }
    return {"segura_appliances": {"hosts": {"lab-appliance": host}}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("inventory")
    inv.add_argument("--appliance-root", required=True)
    inv.add_argument("--recipients", required=True)
    key = sub.add_parser("key")
    key.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "key":
        print(lab_env()[args.name])
    else:
        # JSON is YAML: no YAML library needed, and quoting of the password is exact.
        json.dump(inventory(args.appliance_root, args.recipients), sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
