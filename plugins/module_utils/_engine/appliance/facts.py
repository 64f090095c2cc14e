# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Facts about the appliance: version, cluster role, database and path sizes, free space, mounts."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat as stat_module
import subprocess
import urllib.error
import urllib.request
from typing import Any, Dict, List, Mapping, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, run_query, stderr_excerpt
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError

#: Health endpoint answers (SEGURA.md): status code -> cluster role.
HEALTH_ROLES = {
    200: "primary",
    203: "secondary",
    403: "inactive",
    451: "licence_expired",
    503: "unavailable",
}


def _tree_usage(path: str) -> Dict[str, object]:
    """Bytes and file count below ``path`` (lstat, no symlinks followed)."""
    if not os.path.lexists(path):
        return {"path": path, "exists": False, "bytes": 0, "files": 0}
    total = 0
    files = 0
    pending = [path]
    while pending:
        current = pending.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        if stat_module.S_ISDIR(info.st_mode):
            try:
                with os.scandir(current) as entries:
                    pending.extend(entry.path for entry in entries)
            except OSError:
                continue
        elif stat_module.S_ISREG(info.st_mode):
            total += info.st_size
            files += 1
    return {"path": path, "exists": True, "bytes": total, "files": files}


def _free_space(path: str) -> Optional[Dict[str, object]]:
    try:
        result = os.statvfs(path)
    except OSError:
        return None
    return {"path": path, "bytes_free": result.f_bavail * result.f_frsize,
            "bytes_total": result.f_blocks * result.f_frsize}


_SECRET_MOUNT_OPTIONS = ("password", "pass", "credentials", "cred", "password2")


def network_mounts(mounts_file: str = "/proc/self/mounts") -> List[Dict[str, str]]:
    """CIFS and NFS mounts (source, mount point, type, options without credentials)."""
    result: List[Dict[str, str]] = []
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return result
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        source, mountpoint, fstype, options = fields[:4]
        if not (fstype in ("cifs", "smb3") or fstype.startswith("nfs")):
            continue
        kept = [opt for opt in options.split(",") if opt.split("=", 1)[0] not in _SECRET_MOUNT_OPTIONS]

        def unescape(text):  # /proc/mounts escapes space, tab, newline and backslash in octal
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)

        result.append({"source": unescape(source), "mountpoint": unescape(mountpoint),
                       "fstype": fstype, "options": ",".join(kept)})
    return result


def _galera_enabled(galera_cnf: str) -> Optional[bool]:
    """True/False from wsrep_on in galera.cnf; None when the file is absent."""
    try:
        with open(galera_cnf, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ApplianceError("cannot read %s: %s" % (galera_cnf, os.strerror(exc.errno) if exc.errno else str(exc))) from None
    wsrep_on = False
    provider_none = False
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;[!":
            continue
        key, _sep, value = line.partition("=")
        key = key.strip().replace("-", "_").lower()
        value = value.split("#", 1)[0].strip().strip("'\"").lower()
        if key == "wsrep_on":
            wsrep_on = value in ("1", "on", "true", "yes", "")
        elif key == "wsrep_provider":
            provider_none = value == "none"
    return wsrep_on and not provider_none


def server_cluster_role(db: DatabaseConnection) -> Dict[str, object]:
    """Role of this node as its running MariaDB server sees it (the truth; galera.cnf may not be loaded).

    wsrep off (or a build without Galera), or wsrep on outside a cluster of several nodes (no provider,
    or a cluster of one this node bootstrapped) is a lone node: the primary. A node in a cluster of two or
    more, or one with the Galera provider loaded but cut off from its cluster (evicted: size 0,
    Disconnected, as a node without a provider also reports), cannot tell by itself whether it is the primary.
    """
    rows = run_query(db, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_provider');\n"
                         "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', 'wsrep_cluster_status');\n")
    return role_from_wsrep({row[0].lower(): row[-1] for row in rows if len(row) >= 2})


def role_from_wsrep(values: Mapping[str, str]) -> Dict[str, object]:
    """The role from the server's wsrep_on, wsrep_provider, wsrep_cluster_size and wsrep_cluster_status
    (lower-case names)."""
    size_text = values.get("wsrep_cluster_size", "0")
    size = int(size_text) if size_text.isdigit() else 0
    status = values.get("wsrep_cluster_status", "").lower()
    no_provider = values.get("wsrep_provider", "none").strip().lower() in ("", "none")
    lone = {"role": "standalone", "is_primary": True, "source": "server", "cluster_size": size}
    if values.get("wsrep_on", "OFF").upper() not in ("ON", "1"):
        return dict(lone, cluster_size=0)
    if size <= 1 and (status == "primary" or (no_provider and status in ("disconnected", ""))):
        return lone
    if status != "primary":
        reason = "this node is cut off from its Galera cluster (status %s)" % values.get("wsrep_cluster_status")
    else:
        reason = "this node is in a Galera cluster of %d nodes" % size
    return {"role": "cluster_member", "is_primary": None, "source": "server", "cluster_size": size,
            "error": reason + "; give the health URL to tell whether it is primary"}


def cluster_role(layout: ApplianceLayout, health_url: Optional[str] = None, verify_tls: bool = True,
                 timeout: float = 5.0, db: Optional[DatabaseConnection] = None) -> Dict[str, object]:
    """Role of this node: from Segura's health endpoint when a URL is given, else from the running
    MariaDB server (``db``), else (no connection, or the server does not answer) from galera.cnf.

    Returns {"role", "is_primary" (True/False/None = unknown), "source", "status"?, "cluster_size"?,
    "error"?}. A health URL that does not answer gives role 'unknown' (never guessed to be primary).
    """
    if health_url:
        return _health_role(health_url, verify_tls, timeout)
    if db is not None:
        try:
            return server_cluster_role(db)
        except ApplianceError:
            pass  # the server does not answer: the configuration is all there is
    enabled = _galera_enabled(layout.local("etc/mysql/conf.d/galera.cnf"))
    if not enabled:
        return {"role": "standalone", "is_primary": True, "source": "galera.cnf"}
    return {"role": "cluster_member", "is_primary": None, "source": "galera.cnf",
            "error": "this node is configured for a Galera cluster; give the health URL to tell whether it is primary"}


def _health_role(health_url: str, verify_tls: bool, timeout: float) -> Dict[str, object]:
    """The role Segura's health endpoint answers (200 primary, 203 secondary, 503 unavailable)."""
    if not health_url.startswith(("https://", "http://")):
        raise ConfigError("health URL must start with https:// or http://, got %r" % (health_url,))
    context = None
    if health_url.startswith("https://"):
        context = ssl.create_default_context()
        if not verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(health_url, method="GET", headers={"User-Agent": "segura.backup"})
    try:
        # Plain urllib on purpose: the engine has no Ansible imports (see DESIGN.md).
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        with opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"role": "unknown", "is_primary": None, "source": "health", "status": None,
                "error": "health endpoint %s did not answer: %s" % (health_url, reason)}
    role = HEALTH_ROLES.get(status, "unknown")
    return {"role": role, "is_primary": status == 200, "source": "health", "status": status}


def appliance_version(layout: ApplianceLayout, orbit: Optional[str] = None) -> Dict[str, str]:
    """{'version', 'source'}: ``orbit version`` if the CLI exists, else the version file, else unknown."""
    orbit = orbit or shutil.which("orbit")
    if orbit:
        try:
            result = subprocess.run([orbit, "version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplianceError("'orbit version' could not run: %s" % exc) from None
        if result.returncode != 0:
            raise ApplianceError("'orbit version' failed: %s" % stderr_excerpt(result.stderr))
        lines = [l.strip() for l in result.stdout.decode("utf-8", "replace").splitlines() if l.strip()]
        return {"version": lines[0] if lines else "unknown", "source": "orbit"}
    if layout.version_file:
        path = layout.local(layout.version_file)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(4096).strip()
        except OSError:
            text = ""
        if text:
            return {"version": text.splitlines()[0].strip(), "source": path}
    return {"version": "unknown", "source": "none"}


def database_facts(layout: ApplianceLayout, db: DatabaseConnection) -> Dict[str, object]:
    """Server version and per-database sizes (information_schema), in one client call."""
    names = ", ".join("'%s'" % name for name in layout.databases)  # names are validated identifiers
    rows = run_query(db, (
        "SELECT 'version', VERSION(), '', '';\n"
        "SELECT 'db', SCHEMA_NAME, "
        " (SELECT COALESCE(SUM(DATA_LENGTH), 0) FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME),"
        " (SELECT COALESCE(SUM(INDEX_LENGTH), 0) FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME)"
        " FROM information_schema.SCHEMATA s WHERE SCHEMA_NAME IN (%s) ORDER BY SCHEMA_NAME;\n" % names))
    version = "unknown"
    sizes: Dict[str, Dict[str, object]] = {}
    for row in rows:
        if row[0] == "version":
            version = row[1]
        elif row[0] == "db":
            sizes[row[1]] = {"exists": True, "data_bytes": int(row[2]), "index_bytes": int(row[3])}
    for name in layout.databases:
        sizes.setdefault(name, {"exists": False, "data_bytes": 0, "index_bytes": 0})
    return {"server_version": version, "databases": sizes}


def facts(layout: ApplianceLayout, db: Optional[DatabaseConnection] = None, health_url: Optional[str] = None,
          verify_tls: bool = True, health_timeout: float = 5.0, orbit: Optional[str] = None) -> Dict[str, Any]:
    """Everything ``appliance_info`` reports and the snapshot records. Without ``db`` no database facts."""
    version = appliance_version(layout, orbit)
    paths = {
        "config": [_tree_usage(layout.local(entry.path)) for entry in layout.config_paths],
        "secrets": _tree_usage(layout.secrets_path),
        "sessions": _tree_usage(layout.arz_path),
    }
    free = {"root": _free_space(layout.root), "var": _free_space(layout.local("var"))}
    result: Dict[str, Any] = {
        "hostname": socket.gethostname(),
        "root": layout.root,
        "appliance_version": version["version"],
        "appliance_version_source": version["source"],
        "paths": paths,
        "free_space": free,
        "mounts": network_mounts(),
        "cluster": cluster_role(layout, health_url, verify_tls, health_timeout, db=db),
    }
    if db is not None:
        result["mariadb"] = database_facts(layout, db)
    return result


def estimate_snapshot_size(appliance_facts: Mapping[str, Any]) -> Dict[str, int]:
    """Bytes a snapshot will need on the target, for the free-space preflight.

    A conservative upper bound: data + index size of the databases (a compressed SQL dump is
    smaller; indexes are not dumped), plus config and secrets as they are on disk. Sessions are
    returned apart: only new recordings move, and the caller knows which ones.
    """
    database = 0
    for size in appliance_facts.get("mariadb", {}).get("databases", {}).values():
        database += int(size.get("data_bytes", 0)) + int(size.get("index_bytes", 0))
    paths = appliance_facts.get("paths", {})
    files = sum(int(item.get("bytes", 0)) for item in paths.get("config", []))
    files += int(paths.get("secrets", {}).get("bytes", 0))
    sessions = int(paths.get("sessions", {}).get("bytes", 0))
    return {"database_bytes": database, "files_bytes": files, "snapshot_bytes": database + files,
            "sessions_bytes": sessions}
