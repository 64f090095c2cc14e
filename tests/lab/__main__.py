# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line of the lab.

    python -m tests.lab up      [--state DIR] [--service NAME ...] [--no-pin]   start what is not running
    python -m tests.lab down    [--state DIR] [--service NAME ...]   stop what the lab started
    python -m tests.lab status  [--state DIR]                        per service: running or not (exit 3 if any is down)
    python -m tests.lab env     [--state DIR] [--shell]              endpoints as JSON, or `export SEGURA_LAB_...` lines

State folder: --state, else $SEGURA_LAB_STATE, else <repo>/.lab. `env` includes the SMB password
(tests need it); `up` never prints it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import OrderedDict
from typing import Dict, List

from tests.lab import core
from tests.lab.ganesha import GaneshaService
from tests.lab.samba import SambaService

SECRET_KEYS = ("smb_password",)


def service_classes() -> "OrderedDict[str, type]":
    """The lab's services in start order; MariaDB joins when its module exists."""
    # ganesha first: its veth pair gives smbd a second address that containers can reach.
    classes = OrderedDict([("ganesha", GaneshaService), ("samba", SambaService)])
    try:
        from tests.lab.mariadb import MariaDBService
    except ImportError as exc:
        print("note: mariadb service skipped (%s)" % exc, file=sys.stderr)
    else:
        classes["mariadb"] = MariaDBService
    return classes


def _service_errors() -> tuple:
    """Exceptions that mean "the lab could not do it" (each service module may define its own)."""
    errors = [core.LabError]
    try:
        from tests.lab.mariadb import LabServiceError
    except ImportError:
        pass
    else:
        errors.append(LabServiceError)
    return tuple(errors)


def build_services(state_dir: str, names: List[str]) -> "OrderedDict[str, core.Service]":
    classes = service_classes()
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise core.LabError("unknown service %s; known: %s" % (", ".join(unknown), ", ".join(classes)))
    chosen = names or list(classes)
    return OrderedDict((name, cls(state_dir)) for name, cls in classes.items() if name in chosen)


def merged_env(services: Dict[str, core.Service], state_dir: str) -> dict:
    env = {"lab_state": state_dir}
    for service in services.values():
        env.update(service.env())
    return env


def cmd_up(services, state_dir: str, pin: bool) -> int:
    timings = {}
    env = {"lab_state": state_dir}
    with core.state_lock(state_dir):
        if pin:
            core.pin(state_dir)
        started = time.monotonic()
        for name, service in services.items():
            begin = time.monotonic()
            service.up()
            env.update(service.env())  # the same keys `env` prints, whatever up() adds
            timings[name] = round(time.monotonic() - begin, 3)
        total = round(time.monotonic() - started, 3)
    for key in SECRET_KEYS:
        env.pop(key, None)
    print(json.dumps(env, indent=2, sort_keys=True))
    print("lab up in %.3f s (%s)" % (total, ", ".join("%s %.3f s" % item for item in timings.items())),
          file=sys.stderr)
    return 0


def cmd_down(services, state_dir: str) -> int:
    with core.state_lock(state_dir):
        started = time.monotonic()
        timings = {}
        for name, service in reversed(list(services.items())):
            begin = time.monotonic()
            service.down()
            timings[name] = round(time.monotonic() - begin, 3)
        core.unpin(state_dir)
    print("lab down in %.3f s (%s)" % (time.monotonic() - started,
                                       ", ".join("%s %.3f s" % item for item in timings.items())), file=sys.stderr)
    return 0


def cmd_status(services, state_dir: str) -> int:
    report = OrderedDict((name, service.status()) for name, service in services.items())
    print(json.dumps(report, indent=2, default=str))
    return 0 if all(item["running"] for item in report.values()) else 3


def cmd_env(services, state_dir: str, shell: bool) -> int:
    env = merged_env(services, state_dir)
    if shell:
        for key in sorted(env):
            print("export SEGURA_LAB_%s=%s" % (key.upper(), shlex.quote(str(env[key]))))
    else:
        print(json.dumps(env, indent=2, sort_keys=True))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--state", help="state folder (default $%s or <repo>/.lab)" % core.STATE_ENV)
    parser.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="limit to this service (repeatable): samba, ganesha, mariadb")
    parser.add_argument("--shell", action="store_true", help="env: print `export KEY=value` lines")
    parser.add_argument("--no-pin", action="store_true",
                        help="up: do not mark the lab as wanted by a person (test fixtures use this; a "
                        "session that started an unpinned lab stops it when no other session uses it)")
    args = parser.parse_args(argv)
    state_dir = core.resolve_state_dir(args.state)
    try:
        services = build_services(state_dir, args.service)
        if args.command == "up":
            return cmd_up(services, state_dir, pin=not args.no_pin)
        if args.command == "down":
            return cmd_down(services, state_dir)
        if args.command == "status":
            return cmd_status(services, state_dir)
        return cmd_env(services, state_dir, args.shell)
    except _service_errors() as exc:
        print("lab %s failed: %s" % (args.command, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
