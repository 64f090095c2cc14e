# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup targets: ``open_target(options)`` turns the shared ``target`` option into a Target.

    with open_target(module.params['target']) as target:
        target.write_bytes('x/hello', b'hi')
"""

from __future__ import annotations

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Entry, Target, clean_relpath

__all__ = ["Entry", "Target", "clean_relpath", "open_target", "validate_target_options"]


def _parse_mode(value, key: str) -> int:
    """'0640', '640' or an int (YAML 0640 arrives as 416) -> int permission bits."""
    try:
        mode = value if isinstance(value, int) else int(str(value), 8)
    except ValueError:
        raise ConfigError("target option '%s' must be an octal mode such as '0640', got %r" % (key, value)) from None
    if not 0 <= mode <= 0o7777:
        raise ConfigError("target option '%s' is out of range: %r" % (key, value))
    return mode


def validate_target_options(options: dict) -> dict:
    """The argument spec's checks and defaults (specs.py), then the rules a spec cannot say."""
    # Imported here: specs.py reads constants from engine modules that import this package.
    from ansible_collections.segura.backup.plugins.module_utils._engine.specs import REQUIRED_BY_TYPE, SMB_DEFAULT_PORT, target_spec, validate

    if not isinstance(options, dict):
        raise ConfigError("the target option must be a dictionary")
    # null means "the default" (as an unset module option); the validator would keep it as None.
    options = {key: value for key, value in options.items() if value is not None}
    merged = validate(target_spec(), {"target": options}, "target")["target"]
    empty = [key for key in REQUIRED_BY_TYPE[merged["type"]] if merged[key] == ""]
    if empty:
        raise ConfigError("a %s target needs a non-empty %s" % (merged["type"], ", ".join(empty)))
    if merged["port"] is None and merged["type"] == "smb":
        merged["port"] = SMB_DEFAULT_PORT
    if merged["port"] is not None and not 0 < merged["port"] < 65536:
        raise ConfigError("target option 'port' must be between 1 and 65535, got %r" % (merged["port"],))
    if merged["timeout"] <= 0:
        raise ConfigError("target option 'timeout' must be a positive number of seconds")
    merged["mode"] = _parse_mode(merged["mode"], "mode")
    merged["directory_mode"] = _parse_mode(merged["directory_mode"], "directory_mode")
    if merged["path"] is None:
        merged["path"] = ""
    return merged


def open_target(options: dict) -> Target:
    """Validate the ``target`` option and return the matching Target (connected for smb and nfs)."""
    opts = validate_target_options(options)
    kind = opts["type"]
    if kind == "path":
        from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget

        return PathTarget(opts["path"], file_mode=opts["mode"], dir_mode=opts["directory_mode"])
    if kind == "smb":
        from ansible_collections.segura.backup.plugins.module_utils._engine.targets.smb import SmbTarget

        return SmbTarget(
            server=opts["server"],
            share=opts["share"],
            path=opts["path"],
            username=opts["username"],
            password=opts["password"],
            domain=opts["domain"],
            port=opts["port"],
            encrypt=opts["encrypt"],
            timeout=opts["timeout"],
        )
    from ansible_collections.segura.backup.plugins.module_utils._engine.targets.nfs import NfsTarget

    return NfsTarget(
        server=opts["server"],
        export=opts["export"],
        path=opts["path"],
        version=opts["version"],
        port=opts["port"],
        uid=opts["uid"],
        gid=opts["gid"],
        timeout=opts["timeout"],
        file_mode=opts["mode"],
        dir_mode=opts["directory_mode"],
    )
