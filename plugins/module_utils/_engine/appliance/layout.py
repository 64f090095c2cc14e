# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Where a Segura appliance keeps what is backed up: ``ApplianceLayout``, relative to a root."""

from __future__ import annotations

import os
import re
import stat as stat_module
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError


def file_type(mode: int) -> Optional[str]:
    """'file', 'dir' or 'symlink' for a stat mode (the types a snapshot records); None for anything else."""
    if stat_module.S_ISREG(mode):
        return "file"
    if stat_module.S_ISDIR(mode):
        return "dir"
    if stat_module.S_ISLNK(mode):
        return "symlink"
    return None


#: Components a snapshot can hold. ``collect_files`` handles 'config' and 'secrets'; the database
#: dump and the session sync are separate streams.
COMPONENTS = ("database", "config", "secrets", "sessions")

DEFAULT_DATABASES = ("mt4", "senhasegura")


class ConfigPath(NamedTuple):
    """One configured path below the layout root; ``optional`` paths may be absent."""

    path: str
    optional: bool = False


#: SEGURA.md's config paths. galera.cnf exists only in clusters and etc/senhasegura only on some
#: releases (*inferred*), so both are optional; orbinibkp.conf is on every appliance.
DEFAULT_CONFIG_PATHS = (
    ConfigPath("var/senhasegura/orbinibkp.conf"),
    ConfigPath("etc/mysql/conf.d/galera.cnf", optional=True),
    ConfigPath("etc/senhasegura", optional=True),
)

_DB_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


def check_database_names(databases) -> tuple:
    """The names as a tuple, or ConfigError: a non-empty list of distinct, safe identifiers."""
    if isinstance(databases, str) or not databases:
        raise ConfigError("databases must be a non-empty list of database names")
    for name in databases:
        if not isinstance(name, str) or not _DB_NAME.match(name):
            raise ConfigError("invalid database name %r (letters, digits, '_' and '$' only)" % (name,))
    if len(set(databases)) != len(databases):
        raise ConfigError("databases lists a name twice: %s" % ", ".join(databases))
    return tuple(databases)


def _clean_rel(value, what: str) -> str:
    """A path below the root, as a clean relative POSIX path. '/etc/x' is accepted as 'etc/x'."""
    if not isinstance(value, str) or not value.strip("/") or "\x00" in value:
        raise ConfigError("%s must be a non-empty path, got %r" % (what, value))
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ConfigError("%s %r must not contain '..'" % (what, value))
    return "/".join(parts)


def _parse_config_path(value) -> ConfigPath:
    """'etc/x', ConfigPath or {'path': 'etc/x', 'optional': true} -> ConfigPath."""
    path: object  # checked by _clean_rel
    if isinstance(value, ConfigPath):
        path, optional = value.path, value.optional
    elif isinstance(value, dict):
        unknown = set(value) - {"path", "optional"}
        if unknown:
            raise ConfigError("config path entry has unknown key(s): %s" % ", ".join(sorted(unknown)))
        path, optional = value.get("path"), bool(value.get("optional", False))
    else:
        path, optional = value, False
    return ConfigPath(_clean_rel(path, "config path"), optional)


@dataclass
class ApplianceLayout:
    """Where a Segura appliance keeps what we back up; every path is relative to ``root``."""

    root: str = "/"
    arz_dir: str = "var/senhasegura/arz"
    secrets_dir: str = "srv/cache/coba"
    #: Given as 'etc/x', {'path': 'etc/x', 'optional': true} or ConfigPath entries; __post_init__
    #: turns them into a tuple of ConfigPath, which is what every reader sees.
    config_paths: Sequence[ConfigPath] = DEFAULT_CONFIG_PATHS
    databases: Sequence[str] = DEFAULT_DATABASES
    #: *inferred*: read only when the ``orbit`` CLI is absent.
    version_file: Optional[str] = "etc/senhasegura/version"

    def __post_init__(self):
        if not isinstance(self.root, str) or not os.path.isabs(self.root):
            raise ConfigError("appliance root must be an absolute path, got %r" % (self.root,))
        self.root = os.path.normpath(self.root)
        if not os.path.isdir(self.root):
            raise ConfigError("appliance root %s is not a directory" % self.root)
        self.arz_dir = _clean_rel(self.arz_dir, "sessions folder (arz_dir)")
        self.secrets_dir = _clean_rel(self.secrets_dir, "secrets folder (secrets_dir)")
        if isinstance(self.config_paths, (str, dict, ConfigPath)):
            raise ConfigError("config_paths must be a list of paths")
        self.config_paths = tuple(_parse_config_path(item) for item in self.config_paths)
        self.databases = check_database_names(self.databases)
        if self.version_file is not None:
            self.version_file = _clean_rel(self.version_file, "version_file")

    def local(self, relpath: str) -> str:
        """Absolute local path of a layout-relative path."""
        return os.path.join(self.root, relpath) if relpath else self.root

    @property
    def arz_path(self) -> str:
        return self.local(self.arz_dir)

    @property
    def secrets_path(self) -> str:
        return self.local(self.secrets_dir)
