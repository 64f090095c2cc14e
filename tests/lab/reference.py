# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reference appliance: a deterministic, seeded Segura look-alike, and its fingerprint.

``seed()`` fills a root folder (files) and a MariaDB server (databases ``mt4`` and ``senhasegura``)
the way a Segura appliance looks; ``fingerprint()`` describes both so that two appliances compare
equal with ``==`` exactly when their backed-up content is the same (used to prove that a restore
brought everything back).

Size budget of a seed of N bytes (documented split):
  * ~55 % session recordings  ``var/senhasegura/arz/YYYY/MMDD/*.arz`` (incompressible bytes)
  * ~40 % databases (InnoDB data + index size; the audit log holds most of it)
  * ~5 %  secrets staging ``srv/cache/coba`` (encrypted-looking exports); config files are a few KB

Same seed + same size gives byte-identical files (mtimes included) and identical table contents.
Files are streamed and rows generated in batches, so several GB never sit in memory.

CLI::

    python -m tests.lab.reference seed --root DIR --size 20MB --seed 1 [--defaults-file F | --socket S]
    python -m tests.lab.reference fingerprint --root DIR [--defaults-file F | --socket S]

Without a connection option the CLI uses $SEGURA_LAB_MYSQL_DEFAULTS_FILE; ``--no-db`` skips the DB.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Optional, Tuple

DATABASES = ("mt4", "senhasegura")
# What a backup of the appliance covers, relative to its root (files and folders).
BACKED_UP_PATHS = (
    "etc/mysql/conf.d/galera.cnf",
    "etc/senhasegura",
    "srv/cache/coba",
    "var/senhasegura/orbinibkp.conf",
    "var/senhasegura/arz",
)
SHARE_RECORDINGS = 0.55
SHARE_DATABASES = 0.40
SHARE_COBA = 0.05
# InnoDB size ~= INNODB_FIXED_BYTES + INNODB_BYTES_PER_SQL_BYTE * INSERT text (row headers, page
# fill, secondary indexes and 1 MiB extents vs. quotes, commas and hex), fitted on MariaDB 10.11 for
# seeds of 10 MB to 500 MB. Below ~10 MB the extent granularity dominates and seeds come out larger.
INNODB_BYTES_PER_SQL_BYTE = 1.06
INNODB_FIXED_BYTES = 1_000_000
MIN_AUDIT_SQL_BYTES = 64 << 10
DEFAULTS_FILE_ENV = "SEGURA_LAB_MYSQL_DEFAULTS_FILE"

# Recordings span a year boundary, so YYYY/MMDD folders cover two years.
FIRST_RECORDING_DAY = calendar.timegm((2024, 12, 28, 0, 0, 0))
RECORDING_DAYS = 7
AUDIT_LOG_START = calendar.timegm((2024, 10, 1, 0, 0, 0))
CONFIG_MTIME = calendar.timegm((2024, 11, 15, 9, 30, 0))
CHUNK = 1 << 20
SQL_STATEMENT_BYTES = 1 << 20
SQL_COMMIT_BYTES = 32 << 20

_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000 ** 2, "MB": 1000 ** 2, "G": 1000 ** 3,
               "GB": 1000 ** 3, "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3}


class ReferenceSeedError(RuntimeError):
    """Seeding or fingerprinting failed; the message names the cause."""


def parse_size(text: str) -> int:
    """'20MB' -> 20_000_000; KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError("not a size: %r (use e.g. 20MB, 1.5GB, 512MiB)" % text)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def _rng(seed: int, *labels) -> random.Random:
    """An independent, reproducible random stream per (seed, purpose): str seeds hash with SHA-512."""
    return random.Random("segura-reference:%d:%s" % (seed, ":".join(str(label) for label in labels)))


# =============================================================================== files
def plan_recordings(size_bytes: int, seed: int) -> List[dict]:
    """The session recordings of a seed: path, size, mtime, protocol, user/device indexes.

    Shared by the file generator and the ``sessions`` table, so the DB points at real files.
    """
    budget = int(size_bytes * SHARE_RECORDINGS)
    mean = min(max(budget // 48, 32 << 10), 64 << 20)
    rng = _rng(seed, "recordings")
    plan = []
    remaining = budget
    while remaining > 0:
        size = int(mean * rng.uniform(0.2, 1.8))
        if remaining - size < mean // 5:
            size = remaining  # fold a tiny tail into the last file so the total is exact
        day = FIRST_RECORDING_DAY + (len(plan) % RECORDING_DAYS) * 86400
        start = day + rng.randrange(6 * 3600, 22 * 3600)
        protocol = rng.choice(("ssh", "rdp", "vnc", "telnet", "http"))
        index = len(plan) + 1
        name = "%s-%06d-%s.arz" % (time.strftime("%H%M%S", time.gmtime(start)), index, protocol)
        plan.append({
            "index": index,
            "path": "var/senhasegura/arz/%s/%s" % (time.strftime("%Y/%m%d", time.gmtime(day)), name),
            "size": size,
            "start": start,
            "mtime": start + rng.randrange(60, 4 * 3600),
            "protocol": protocol,
            "user": rng.randrange(1 << 30),
            "device": rng.randrange(1 << 30),
        })
        remaining -= size
    return plan


def _write_random_file(path: str, size: int, rng: random.Random, header: bytes = b"") -> None:
    with open(path, "wb") as handle:
        handle.write(header[:size])
        left = size - len(header[:size])
        while left > 0:
            step = min(CHUNK, left)
            handle.write(rng.randbytes(step))
            left -= step


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _config_files(seed: int) -> List[Tuple[str, str, int]]:
    """(relative path, content, mode) of the small config files; content depends on the seed."""
    rng = _rng(seed, "config")
    node = "segura-%02d" % rng.randrange(1, 99)
    peers = ",".join("10.20.%d.%d" % (rng.randrange(256), rng.randrange(1, 255)) for _peer in range(3))
    return [
        ("var/senhasegura/orbinibkp.conf", (
            "# Segura native backup configuration\n[backup]\nenabled=1\nhour=5\n"
            "protocol=cifs\nremote_host=backup-%d.example.internal\nremote_path=/segura/%s\n"
            "filename_prefix=%s\ntotal_of_backups=%d\nsessions_backup=1\n"
            % (rng.randrange(1, 9), node, node, rng.randrange(3, 30))), 0o640),
        ("etc/mysql/conf.d/galera.cnf", (
            "[galera]\nwsrep_on=ON\nwsrep_provider=/usr/lib/galera/libgalera_smm.so\n"
            "wsrep_cluster_name=\"segura-cluster-%d\"\nwsrep_cluster_address=\"gcomm://%s\"\n"
            "wsrep_node_name=\"%s\"\nbinlog_format=row\ndefault_storage_engine=InnoDB\n"
            "innodb_autoinc_lock_mode=2\n" % (seed, peers, node)), 0o644),
        ("etc/senhasegura/senhasegura.conf", (
            "[application]\nnode=%s\nversion=3.%d.%d\nlanguage=pt_BR\n[proxy]\nssh_port=59022\n"
            "recordings=/var/senhasegura/arz\n" % (node, rng.randrange(20, 40), rng.randrange(10))), 0o640),
        ("etc/senhasegura/política de retenção.conf", (
            "# Política de retenção — gravações de sessão\nretencao_dias=%d\n"
            "responsável=José Conceição\n" % rng.randrange(30, 400)), 0o644),
        ("etc/senhasegura/conf.d/10-proxy.conf",
         "[proxy]\nmax_sessions=%d\nidle_timeout=900\n" % rng.randrange(50, 500), 0o640),
        # An empty override file, one level deeper: plausible and exercises empty members.
        ("etc/senhasegura/conf.d/local/overrides.conf", "", 0o640),
    ]


def _coba_files(size_bytes: int) -> List[Tuple[str, int]]:
    """(relative path, size) of the secrets-staging exports."""
    budget = int(size_bytes * SHARE_COBA)
    first, second = budget * 4 // 10, budget * 3 // 10
    return [
        ("srv/cache/coba/secrets_20250102T050000Z.aes", first),
        ("srv/cache/coba/secrets_20250103T050000Z.aes", second),
        ("srv/cache/coba/history/2024/12/secrets_20241231T050000Z.aes", budget - first - second),
    ]


def _refuse_dangerous_root(root: str) -> str:
    real = os.path.realpath(root)
    if real == "/":
        raise ReferenceSeedError("refusing to seed the real root folder '/'; give a lab directory")
    return real


def _clear_managed_paths(root: str) -> None:
    for relative in BACKED_UP_PATHS:
        path = os.path.join(root, relative)
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)


def seed_files(root: str, size_bytes: int, seed: int) -> dict:
    """Write the appliance's files under root (replacing earlier seeds); returns counts and bytes."""
    root = _refuse_dangerous_root(root)
    _clear_managed_paths(root)
    summary = {"recordings": {"count": 0, "bytes": 0}, "coba": {"count": 0, "bytes": 0},
               "config": {"count": 0, "bytes": 0}}
    mtimes: Dict[str, int] = {}

    def make_parent(relative: str, mode: int) -> str:
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        parent = os.path.dirname(relative)
        while parent and parent not in mtimes:
            mtimes[parent] = 0
            os.chmod(os.path.join(root, parent), mode)
            parent = os.path.dirname(parent)
        return path

    for recording in plan_recordings(size_bytes, seed):
        path = make_parent(recording["path"], 0o750)
        _write_random_file(path, recording["size"], _rng(seed, recording["path"]))
        os.chmod(path, 0o640)
        mtimes[recording["path"]] = recording["mtime"]
        summary["recordings"]["count"] += 1
        summary["recordings"]["bytes"] += recording["size"]

    for number, (relative, size) in enumerate(_coba_files(size_bytes)):
        path = make_parent(relative, 0o700)
        rng = _rng(seed, relative)
        # Looks like `openssl enc` output: magic, salt, ciphertext.
        _write_random_file(path, size, rng, header=b"Salted__" + rng.randbytes(8))
        os.chmod(path, 0o600)
        mtimes[relative] = FIRST_RECORDING_DAY + (4 + number) * 86400 + 5 * 3600
        summary["coba"]["count"] += 1
        summary["coba"]["bytes"] += size

    for relative, content, mode in _config_files(seed):
        path = make_parent(relative, 0o755)
        _write_text(path, content)
        os.chmod(path, mode)
        mtimes[relative] = CONFIG_MTIME + _rng(seed, "mtime", relative).randrange(86400 * 30)
        summary["config"]["count"] += 1
        summary["config"]["bytes"] += os.path.getsize(path)

    link = "etc/senhasegura/active.conf"
    os.symlink("senhasegura.conf", os.path.join(root, link))
    mtimes[link] = CONFIG_MTIME

    plant_signing_key(root, seed)

    # Folders last and deepest first: creating entries changes a folder's mtime.
    for relative in sorted(mtimes, key=lambda name: name.count("/"), reverse=True):
        mtime = mtimes[relative] or FIRST_RECORDING_DAY + RECORDING_DAYS * 86400
        os.utime(os.path.join(root, relative), (mtime, mtime), follow_symlinks=False)
    summary["total_bytes"] = sum(part["bytes"] for part in summary.values())
    return summary


#: Where the runtime role puts an appliance's signing key (below its root); not a config path, so
#: never in a snapshot.
SIGNING_KEY = "etc/segura-backup/signing_key"


def plant_signing_key(root: str, seed: int) -> str:
    """The appliance's Ed25519 signing key (0600, and .pub), as the runtime role makes it with
    ``ssh-keygen -t ed25519``; the same key for the same seed. Returns the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.from_private_bytes(_rng(seed, "signing key").randbytes(32))
    path = os.path.join(root, SIGNING_KEY)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    _write_text(path + ".pub", public + " segura-backup\n")
    return public


def signers_text(root: str, *appliances: str) -> str:
    """An allowed-signers text pinning the key below ``root`` for each of ``appliances``."""
    with open(os.path.join(root, SIGNING_KEY + ".pub"), "r", encoding="utf-8") as handle:
        public = " ".join(handle.read().split()[:2])
    return "".join('%s namespaces="segura-backup" %s\n' % (name, public) for name in appliances)


#: What ``plant_odd_recordings`` puts into a recordings tree: relpath below arz -> how a snapshot takes it.
ODD_RECORDINGS = {
    "2025/0101/link-inside.arz": ("symlink", None),  # -> the first recording of that day
    "2025/0101/link-escaping.arz": ("symlink", "../../../../../../etc/shadow"),
    "2025/0101/link-absolute.arz": ("symlink", "/etc/passwd"),
    "2025/0101/link-dangling.arz": ("symlink", "recorded-elsewhere.arz"),
    "2025/0101/hardlink.arz": ("hardlink", None),  # another name of the first recording of that day
    "2025/0101/pipe.arz": ("problem", "is a FIFO (named pipe), not a recording"),
    "2025/0101/unreadable.arz": ("unreadable", "cannot be read (Permission denied)"),  # only without DAC override
}


def plant_odd_recordings(root: str) -> Dict[str, Tuple[str, Optional[str]]]:
    """Add what a real recordings tree may hold besides recordings (``ODD_RECORDINGS``) to a seeded
    appliance; returns {relpath: (kind, link target text or problem reason)} with the texts filled in.

    The unreadable file is mode 000: root still reads it unless it runs without CAP_DAC_OVERRIDE
    (``setpriv --bounding-set=-dac_override,-dac_read_search``), as an unprivileged backup user would.
    """
    day = os.path.join(root, "var/senhasegura/arz/2025/0101")
    first = sorted(name for name in os.listdir(day) if name.endswith(".arz"))[0]
    planted = {}
    for relpath, (kind, text) in ODD_RECORDINGS.items():
        path = os.path.join(root, "var/senhasegura/arz", relpath)
        if kind == "symlink":
            text = text or first
            os.symlink(text, path)
        elif kind == "hardlink":
            os.link(os.path.join(day, first), path)
            text = first
        elif kind == "problem":
            os.mkfifo(path)
        else:
            with open(path, "wb") as handle:
                handle.write(b"not for the backup user")
            os.chmod(path, 0)
        planted[relpath] = (kind, text)
    return planted


def _iter_tree(root: str) -> Iterator[str]:
    """Every backed-up path under root (relative), folders included, in a stable order."""
    for relative in BACKED_UP_PATHS:
        top = os.path.join(root, relative)
        if not os.path.lexists(top):
            continue
        yield relative
        if os.path.isdir(top) and not os.path.islink(top):
            for folder, dirs, files in os.walk(top):
                dirs.sort()
                for name in sorted(dirs + files):
                    yield os.path.relpath(os.path.join(folder, name), root)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_files(root: str, include_mtime: bool = False) -> dict:
    """{relative path: {"type", "mode", "size", "sha256" | "target"[, "mtime"]}} of the backed-up paths.

    mtimes are left out by default: a restore need not bring them back for content to be the same.
    """
    root = os.path.realpath(root)
    result = {}
    for relative in _iter_tree(root):
        path = os.path.join(root, relative)
        info = os.lstat(path)
        entry = {"mode": "%04o" % stat.S_IMODE(info.st_mode)}
        if stat.S_ISLNK(info.st_mode):
            entry.update(type="symlink", target=os.readlink(path))
            entry.pop("mode")  # symlink modes are meaningless on Linux
        elif stat.S_ISDIR(info.st_mode):
            entry["type"] = "dir"
        elif stat.S_ISREG(info.st_mode):
            entry.update(type="file", size=info.st_size, sha256=_sha256_file(path))
        else:
            entry["type"] = "other"
        if include_mtime:
            entry["mtime"] = int(info.st_mtime)
        result[relative] = entry
    return result


# =============================================================================== database access
def client_command(db_conn_args: Optional[dict], tool: str = "mariadb") -> List[str]:
    """A client command line from connection facts; never carries a password.

    db_conn_args keys (all optional): defaults_file, socket, host, port, user; the ``mysql_`` prefixed
    names of MariaDBService.env() are accepted too.
    """
    args = {}
    for key, value in (db_conn_args or {}).items():
        if value not in (None, ""):
            args[key[len("mysql_"):] if key.startswith("mysql_") else key] = value
    command = [tool]
    if args.get("defaults_file"):
        command.append("--defaults-file=%s" % args["defaults_file"])  # must come first
    if args.get("socket"):
        command.append("--socket=%s" % args["socket"])
        command.append("--protocol=socket")
    elif args.get("host"):
        command += ["--host=%s" % args["host"], "--port=%s" % args.get("port", 3306), "--protocol=tcp"]
    if args.get("user"):
        command.append("--user=%s" % args["user"])
    command.append("--default-character-set=utf8mb4")
    return command


def _client_error(result_stderr: bytes) -> str:
    return result_stderr.decode("utf-8", errors="replace").strip()[-2000:]


_UNESCAPE = re.compile(r"\\(.)", re.S)
_UNESCAPES = {"0": "\0", "t": "\t", "n": "\n", "\\": "\\"}


def _unescape_match(match) -> str:
    return _UNESCAPES.get(match.group(1), match.group(1))


def _query(db_conn_args: Optional[dict], sql: str) -> List[List[Optional[str]]]:
    """Rows of a small query (batch output, unescaped; NULL becomes None)."""
    result = subprocess.run(client_command(db_conn_args) + ["--batch", "--skip-column-names"],
                            input=sql.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=600, check=False)
    if result.returncode != 0:
        raise ReferenceSeedError("query failed: %s" % _client_error(result.stderr))
    rows = []
    for line in result.stdout.decode("utf-8").split("\n")[:-1]:
        rows.append([None if field == "NULL" else _UNESCAPE.sub(_unescape_match, field)
                     for field in line.split("\t")])
    return rows


def _hash_query(db_conn_args: Optional[dict], sql: str) -> Tuple[str, int]:
    """sha256 of a query's batch output, streamed, and its row count (lines; newlines are escaped)."""
    process = subprocess.Popen(client_command(db_conn_args) + ["--batch", "--skip-column-names", "--quick"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(sql.encode("utf-8"))
    process.stdin.close()
    digest = hashlib.sha256()
    lines = 0
    for block in iter(lambda: process.stdout.read(CHUNK), b""):
        digest.update(block)
        lines += block.count(b"\n")
    stderr = process.stderr.read()
    if process.wait(timeout=600) != 0:
        raise ReferenceSeedError("query failed: %s" % _client_error(stderr))
    return digest.hexdigest(), lines


# =============================================================================== database content
SCHEMA_SQL = r"""
SET time_zone = '+00:00';
SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci;
DROP DATABASE IF EXISTS senhasegura;
DROP DATABASE IF EXISTS mt4;
CREATE DATABASE mt4 CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE senhasegura CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

USE mt4;
CREATE TABLE users (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  username VARCHAR(64) NOT NULL,
  full_name VARCHAR(128) NOT NULL,
  email VARCHAR(128) NOT NULL,
  password_hash VARBINARY(64) NOT NULL,
  status ENUM('active','blocked','expired') NOT NULL DEFAULT 'active',
  created_at DATETIME NOT NULL,
  last_login TIMESTAMP NULL DEFAULT NULL,
  UNIQUE KEY uq_users_username (username)
) ENGINE=InnoDB;

CREATE TABLE devices (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  hostname VARCHAR(128) NOT NULL,
  ip VARCHAR(45) NOT NULL,
  device_type ENUM('linux','windows','network','database','cloud') NOT NULL,
  vendor VARCHAR(64) NOT NULL,
  port SMALLINT UNSIGNED NOT NULL,
  site VARCHAR(128) NOT NULL,
  created_at DATETIME NOT NULL,
  KEY ix_devices_hostname (hostname)
) ENGINE=InnoDB;

CREATE TABLE credentials (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  device_id INT UNSIGNED NOT NULL,
  username VARCHAR(128) NOT NULL,
  label VARCHAR(255) NOT NULL,
  secret_encrypted VARBINARY(1024) NOT NULL,
  iv BINARY(16) NOT NULL,
  key_version SMALLINT UNSIGNED NOT NULL,
  rotated_at DATETIME NOT NULL,
  CONSTRAINT fk_credentials_device FOREIGN KEY (device_id) REFERENCES devices (id)
) ENGINE=InnoDB;

CREATE TABLE credential_history (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  credential_id INT UNSIGNED NOT NULL,
  secret_encrypted VARBINARY(1024) NOT NULL,
  key_version SMALLINT UNSIGNED NOT NULL,
  changed_at DATETIME NOT NULL,
  KEY ix_history_credential (credential_id)
) ENGINE=InnoDB;

CREATE TABLE access_policies (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  name VARCHAR(128) NOT NULL,
  description TEXT NOT NULL,
  max_session_minutes SMALLINT UNSIGNED NOT NULL,
  require_approval TINYINT(1) NOT NULL,
  allowed_hours VARCHAR(32) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE policy_assignments (
  policy_id INT UNSIGNED NOT NULL,
  user_id INT UNSIGNED NOT NULL,
  device_id INT UNSIGNED NOT NULL,
  PRIMARY KEY (policy_id, user_id, device_id)
) ENGINE=InnoDB;

CREATE VIEW v_credential_inventory AS
  SELECT c.id AS credential_id, c.label, c.username, d.hostname, d.ip, c.key_version, c.rotated_at
  FROM credentials c JOIN devices d ON d.id = c.device_id;

DELIMITER ;;
CREATE TRIGGER trg_credentials_history BEFORE UPDATE ON credentials FOR EACH ROW
BEGIN
  IF OLD.secret_encrypted <> NEW.secret_encrypted THEN
    INSERT INTO credential_history (credential_id, secret_encrypted, key_version, changed_at)
    VALUES (OLD.id, OLD.secret_encrypted, OLD.key_version, NEW.rotated_at);
  END IF;
END ;;
CREATE PROCEDURE sp_rotate_credential(IN p_id INT UNSIGNED, IN p_secret VARBINARY(1024), IN p_at DATETIME)
  MODIFIES SQL DATA
BEGIN
  UPDATE credentials SET secret_encrypted = p_secret, key_version = key_version + 1, rotated_at = p_at
  WHERE id = p_id;
END ;;
DELIMITER ;

USE senhasegura;
CREATE TABLE settings (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  value TEXT NOT NULL
) ENGINE=InnoDB;

CREATE TABLE sessions (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  user_id INT UNSIGNED NOT NULL,
  device_id INT UNSIGNED NOT NULL,
  protocol VARCHAR(16) NOT NULL,
  started_at DATETIME NOT NULL,
  ended_at DATETIME NOT NULL,
  recording_path VARCHAR(255) NOT NULL,
  recording_size BIGINT UNSIGNED NOT NULL,
  KEY ix_sessions_started (started_at)
) ENGINE=InnoDB;

CREATE TABLE audit_log (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  event_time DATETIME(6) NOT NULL,
  user_id INT UNSIGNED NOT NULL,
  device_id INT UNSIGNED NOT NULL,
  action VARCHAR(32) NOT NULL,
  severity TINYINT UNSIGNED NOT NULL,
  source_ip VARCHAR(45) NOT NULL,
  session_id INT UNSIGNED NULL,
  message VARCHAR(2048) NOT NULL,
  details JSON NOT NULL,
  KEY ix_audit_time (event_time)
) ENGINE=InnoDB;

CREATE VIEW v_recent_sessions AS
  SELECT s.id, s.user_id, s.device_id, s.protocol, s.started_at,
         TIMESTAMPDIFF(SECOND, s.started_at, s.ended_at) AS seconds, s.recording_path
  FROM sessions s WHERE s.started_at >= '2025-01-01';

DELIMITER ;;
CREATE FUNCTION fn_severity_label(p_severity TINYINT UNSIGNED) RETURNS VARCHAR(16)
  DETERMINISTIC NO SQL
BEGIN
  RETURN CASE WHEN p_severity >= 8 THEN 'critical' WHEN p_severity >= 5 THEN 'warning' ELSE 'info' END;
END ;;
DELIMITER ;
-- DISABLE: a lab server with the scheduler on must not change the data behind a fingerprint.
CREATE EVENT ev_purge_audit_log ON SCHEDULE EVERY 1 DAY STARTS '2025-01-01 04:00:00'
  ON COMPLETION PRESERVE DISABLE
  DO DELETE FROM audit_log WHERE event_time < NOW() - INTERVAL 400 DAY;
"""

FIRST_NAMES = ("José", "Conceição", "Ana", "João", "François", "Zoë", "Łukasz", "Søren", "Müller",
               "Ñandú", "王", "李", "Иван", "Αλέξης", "Ayşe", "Nguyễn", "Renée", "Björk", "Ólafur", "Dvořák")
LAST_NAMES = ("Silva", "Gonçalves", "Araújo", "小明", "伟", "Петров", "Παπαδόπουλος", "Øster", "Çelik",
              "Straße", "Fernández", "García", "Kowalski", "O Brien", "Lefèvre", "Yılmaz", "Trần", "🔐 Admin")
SITES = ("São Paulo — DC1", "Rio de Janeiro", "Lisboa", "東京 Tokyo", "Zürich", "México DF", "Bogotá",
         "Kraków", "北京 Beijing", "Reykjavík 🧊")
VENDORS = ("Cisco", "Juniper", "Microsoft", "Red Hat", "Debian", "Oracle", "Fortinet", "Palo Alto", "AWS")
DEVICE_TYPES = ("linux", "windows", "network", "database", "cloud")
ACTIONS = ("login", "logout", "password_view", "password_rotate", "session_start", "session_end",
           "policy_change", "approval_request", "approval_grant", "command_blocked", "file_transfer")
WORDS = ("usuário", "acessou", "o", "dispositivo", "via", "proxy", "sessão", "senha", "visualizada",
         "rotacionada", "comando", "bloqueado", "aprovação", "solicitada", "concedida", "cofre", "chave",
         "política", "ssh", "rdp", "sudo", "systemctl", "restart", "nginx", "cat", "/etc/shadow",
         "SELECT", "grant", "user", "accessed", "device", "session", "password", "rotated", "vault",
         "ticket", "INC-4711", "change", "janela", "manutenção", "emergência", "break-glass", "🔑", "✅",
         "監査", "ログ", "审计", "日志")


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_time(epoch: float, micro: bool = False) -> str:
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(epoch)))
    if micro:
        text += ".%06d" % int(round((epoch - int(epoch)) * 1e6) % 1000000)
    return "'" + text + "'"


def _blob(rng: random.Random, size: int) -> bytes:
    """Random bytes that always contain 0x00 and 0xFF (the bytes most likely to break a dump)."""
    data = bytearray(rng.randbytes(size))
    zero, full = rng.sample(range(size - 1), 2)  # distinct, and never the last byte (set below)
    data[zero], data[full] = 0x00, 0xFF
    data[-1] = rng.choice((0x00, 0xFF, 0x20))  # trailing NUL/space: VARBINARY must keep it
    return bytes(data)


def _person(rng: random.Random) -> str:
    return "%s %s" % (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))


def _db_counts(size_bytes: int, seed: int) -> dict:
    db_budget = size_bytes * SHARE_DATABASES
    return {
        "users": int(min(max(db_budget // 20000, 20), 20000)),
        "devices": int(min(max(db_budget // 10000, 20), 50000)),
        "policies": int(min(max(db_budget // 200000, 5), 500)),
        "sessions": len(plan_recordings(size_bytes, seed)),
        # SQL text for all tables: the audit log gets what the others leave (at least a few rows).
        "sql_bytes": int((db_budget - min(INNODB_FIXED_BYTES, db_budget / 4)) / INNODB_BYTES_PER_SQL_BYTE),
    }


def _insert_statements(table: str, columns: str, rows: Iterator[str]) -> Iterator[Tuple[str, int]]:
    """(multi-row INSERT of about SQL_STATEMENT_BYTES, its row count)."""
    batch: List[str] = []
    size = 0
    for row in rows:
        batch.append(row)
        size += len(row)
        if size >= SQL_STATEMENT_BYTES:
            yield "INSERT INTO %s (%s) VALUES\n%s;\n" % (table, columns, ",\n".join(batch)), len(batch)
            batch, size = [], 0
    if batch:
        yield "INSERT INTO %s (%s) VALUES\n%s;\n" % (table, columns, ",\n".join(batch)), len(batch)


def _database_sql(size_bytes: int, seed: int, totals: dict) -> Iterator[str]:
    """The whole DB seed as a stream of SQL text; totals collects row counts and SQL bytes."""
    counts = _db_counts(size_bytes, seed)
    yield SCHEMA_SQL
    yield ("SET time_zone = '+00:00';\nSET foreign_key_checks = 0;\nSET unique_checks = 0;\n"
           "SET autocommit = 0;\n")

    def rows_users():
        rng = _rng(seed, "users")
        for user in range(1, counts["users"] + 1):
            created = AUDIT_LOG_START - rng.randrange(400 * 86400)
            last_login = "NULL" if rng.random() < 0.1 else _sql_time(created + rng.randrange(400 * 86400))
            yield "(%d,%s,%s,%s,0x%s,%s,%s,%s)" % (
                user, _sql_str("user%05d.%s" % (user, rng.choice(("ops", "dba", "net", "sec", "açaí", "東京")))),
                _sql_str(_person(rng)), _sql_str("user%05d@example.com" % user),
                hashlib.sha256(rng.randbytes(16)).hexdigest(),
                _sql_str(rng.choice(("active",) * 8 + ("blocked", "expired"))),
                _sql_time(created), last_login)

    def rows_devices():
        rng = _rng(seed, "devices")
        for device in range(1, counts["devices"] + 1):
            kind = rng.choice(DEVICE_TYPES)
            yield "(%d,%s,'10.%d.%d.%d',%s,%s,%d,%s,%s)" % (
                device, _sql_str("%s-%s-%04d.corp.example" % (kind[:3], rng.choice(("prd", "hml", "dev")), device)),
                rng.randrange(256), rng.randrange(256), rng.randrange(1, 255), _sql_str(kind),
                _sql_str(rng.choice(VENDORS)), rng.choice((22, 3389, 443, 1521, 5432, 23)),
                _sql_str(rng.choice(SITES)), _sql_time(AUDIT_LOG_START - rng.randrange(800 * 86400)))

    def rows_credentials():
        rng = _rng(seed, "credentials")
        for credential in range(1, counts["devices"] * 2 + 1):
            device = (credential + 1) // 2
            yield "(%d,%d,%s,%s,0x%s,0x%s,%d,%s)" % (
                credential, device,
                _sql_str(rng.choice(("root", "Administrator", "sa", "oracle", "admin", "usuário_serviço",
                                     "サービス"))),
                _sql_str("%s 🔑 %s #%d" % (
                    rng.choice(("Conta de serviço", "Break-glass", "Domínio", "ルート", "数据库")),
                    rng.choice(SITES), credential)),
                _blob(rng, rng.randrange(32, 512)).hex(), _blob(rng, 16).hex(), rng.randrange(1, 20),
                _sql_time(AUDIT_LOG_START + rng.randrange(90 * 86400)))

    def rows_history():
        rng = _rng(seed, "history")
        for entry in range(1, counts["devices"] // 4 + 2):
            yield "(%d,%d,0x%s,%d,%s)" % (entry, rng.randrange(1, counts["devices"] * 2 + 1),
                                          _blob(rng, rng.randrange(32, 512)).hex(), rng.randrange(1, 20),
                                          _sql_time(AUDIT_LOG_START - rng.randrange(90 * 86400)))

    def rows_policies():
        rng = _rng(seed, "policies")
        for policy in range(1, counts["policies"] + 1):
            yield "(%d,%s,%s,%d,%d,'%02d:00-%02d:00')" % (
                policy, _sql_str("Política %d — %s" % (policy, rng.choice(SITES))),
                _sql_str(" ".join(rng.choices(WORDS, k=rng.randrange(5, 40)))),
                rng.choice((30, 60, 120, 240, 480)), rng.random() < 0.5, rng.randrange(0, 9),
                rng.randrange(17, 24))

    def rows_assignments():
        rng = _rng(seed, "assignments")
        for user in range(1, counts["users"] + 1):
            first = rng.randrange(1, counts["policies"] + 1)
            for step in range(2):  # two different policies per user, so keys never collide
                policy = (first - 1 + step) % counts["policies"] + 1
                yield "(%d,%d,%d)" % (policy, user, rng.randrange(1, counts["devices"] + 1))

    def rows_settings():
        rng = _rng(seed, "settings")
        for number in range(40):
            yield "(%s,%s)" % (_sql_str("setting.%02d" % number),
                               _sql_str(" ".join(rng.choices(WORDS, k=rng.randrange(1, 12)))))

    def rows_sessions():
        for recording in plan_recordings(size_bytes, seed):
            yield "(%d,%d,%d,%s,%s,%s,%s,%d)" % (
                recording["index"], recording["user"] % counts["users"] + 1,
                recording["device"] % counts["devices"] + 1, _sql_str(recording["protocol"]),
                _sql_time(recording["start"]), _sql_time(recording["mtime"]),
                _sql_str("/" + recording["path"]), recording["size"])

    def rows_audit():
        # The hot loop of a large seed: cheap random() arithmetic and string slicing instead of
        # randrange/choices/json.dumps per row (about 3x faster, same determinism).
        rng = _rng(seed, "audit")
        rand = rng.random
        corpus = rng.choices(WORDS, k=1 << 16)
        users, devices, sessions = counts["users"], counts["devices"], counts["sessions"]
        span = FIRST_RECORDING_DAY + RECORDING_DAYS * 86400 - AUDIT_LOG_START
        step = span / max(counts["sql_bytes"] / 420.0, 1.0)  # ~420 SQL bytes per row
        budget = max(counts["sql_bytes"] - totals["sql_bytes"], MIN_AUDIT_SQL_BYTES)
        severities = (1, 1, 1, 2, 3, 5, 6, 8, 9)
        clients = ("web", "api", "proxy", "agent")
        produced = 0
        entry = 0
        while produced < budget:
            entry += 1
            moment = AUDIT_LOG_START + entry * step
            start = int(rand() * ((1 << 16) - 60))
            row = ("(%d,'%s.%06d',%d,%d,'%s',%d,'10.%d.%d.%d',%s,'%s',"
                   "'{\"client\": \"%s\", \"ticket\": \"INC-%06d\", \"bytes\": %d, \"nota\": \"%s\"}')" % (
                       entry, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(moment))),
                       int(rand() * 1000000), int(rand() * users) + 1, int(rand() * devices) + 1,
                       ACTIONS[int(rand() * len(ACTIONS))], severities[int(rand() * len(severities))],
                       int(rand() * 256), int(rand() * 256), int(rand() * 254) + 1,
                       "NULL" if rand() < 0.3 else str(int(rand() * sessions) + 1),
                       " ".join(corpus[start:start + 6 + int(rand() * 54)]),
                       clients[int(rand() * 4)], int(rand() * 1000000), int(rand() * (1 << 30)),
                       corpus[int(rand() * len(corpus))]))
            produced += len(row) + 2
            yield row

    tables = (
        ("mt4.users", "id,username,full_name,email,password_hash,status,created_at,last_login", rows_users),
        ("mt4.devices", "id,hostname,ip,device_type,vendor,port,site,created_at", rows_devices),
        ("mt4.credentials", "id,device_id,username,label,secret_encrypted,iv,key_version,rotated_at",
         rows_credentials),
        ("mt4.credential_history", "id,credential_id,secret_encrypted,key_version,changed_at", rows_history),
        ("mt4.access_policies", "id,name,description,max_session_minutes,require_approval,allowed_hours",
         rows_policies),
        ("mt4.policy_assignments", "policy_id,user_id,device_id", rows_assignments),
        ("senhasegura.settings", "name,value", rows_settings),
        ("senhasegura.sessions",
         "id,user_id,device_id,protocol,started_at,ended_at,recording_path,recording_size", rows_sessions),
        # Last: it fills whatever the other tables left of the DB budget.
        ("senhasegura.audit_log",
         "id,event_time,user_id,device_id,action,severity,source_ip,session_id,message,details", rows_audit),
    )
    since_commit = 0
    for table, columns, rows in tables:
        for statement, count in _insert_statements(table, columns, rows()):
            totals["sql_bytes"] += len(statement.encode("utf-8"))
            totals["rows"][table] = totals["rows"].get(table, 0) + count
            since_commit += len(statement)
            yield statement
            if since_commit >= SQL_COMMIT_BYTES:
                yield "COMMIT;\n"
                since_commit = 0
    yield "COMMIT;\nSET foreign_key_checks = 1;\nSET unique_checks = 1;\n"


def seed_databases(db_conn_args: Optional[dict], size_bytes: int, seed: int) -> dict:
    """Drop and recreate mt4 + senhasegura, filled for this size and seed; streams SQL to the client."""
    totals = {"sql_bytes": 0, "rows": {}}
    process = subprocess.Popen(client_command(db_conn_args), stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        buffered: List[bytes] = []
        pending = 0
        for text in _database_sql(size_bytes, seed, totals):
            data = text.encode("utf-8")
            buffered.append(data)
            pending += len(data)
            if pending >= 4 * CHUNK:
                process.stdin.write(b"".join(buffered))
                buffered, pending = [], 0
        process.stdin.write(b"".join(buffered))
        process.stdin.close()
    except BrokenPipeError:
        pass  # the client stopped early; its stderr below says why
    stderr = process.stderr.read()
    if process.wait(timeout=600) != 0:
        raise ReferenceSeedError("seeding the databases failed: %s" % _client_error(stderr))
    return {"sql_bytes": totals["sql_bytes"], "rows": totals["rows"],
            "innodb_bytes": database_size(db_conn_args)}


def database_size(db_conn_args: Optional[dict]) -> int:
    """InnoDB data + index bytes of mt4 and senhasegura, after fresh statistics."""
    tables = _query(db_conn_args, "SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES "
                                  "WHERE TABLE_SCHEMA IN ('mt4','senhasegura') AND TABLE_TYPE = 'BASE TABLE'")
    if tables:
        _query(db_conn_args, "ANALYZE TABLE %s;" % ", ".join(_quote_name(row[0]) for row in tables))
    rows = _query(db_conn_args, "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
                                "WHERE TABLE_SCHEMA IN ('mt4','senhasegura')")
    return int(rows[0][0])


def _quote_name(dotted: str) -> str:
    return ".".join("`%s`" % part.replace("`", "``") for part in dotted.split("."))


# =============================================================================== DB fingerprint
def _normalise_table_ddl(ddl: str) -> str:
    # The next AUTO_INCREMENT value is a counter, not content.
    return re.sub(r" AUTO_INCREMENT=\d+", "", ddl)


def fingerprint_databases(db_conn_args: Optional[dict]) -> dict:
    """Per database: tables (normalised DDL, row count, ordered-rows sha256), views, triggers,
    routines and events (their SHOW CREATE text and the session settings they were created with)."""
    result = {}
    for database in DATABASES:
        schema = _query(db_conn_args, "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                                      "WHERE TABLE_SCHEMA = '%s' ORDER BY TABLE_NAME" % database)
        if not schema and not _query(db_conn_args, "SHOW DATABASES LIKE '%s'" % database):
            result[database] = None
            continue
        entry = {"tables": {}, "views": {}, "triggers": {}, "routines": {}, "events": {}}
        for name, kind in schema:
            qualified = "`%s`.`%s`" % (database, name)
            if kind == "VIEW":
                row = _query(db_conn_args, "SHOW CREATE VIEW %s" % qualified)[0]
                entry["views"][name] = row[1:]
                continue
            ddl = _query(db_conn_args, "SHOW CREATE TABLE %s" % qualified)[0][1]
            order = _order_columns(db_conn_args, database, name)
            digest, rows = _hash_query(db_conn_args, "SET time_zone = '+00:00';\nSELECT * FROM %s ORDER BY %s"
                                       % (qualified, order))
            entry["tables"][name] = {"ddl": _normalise_table_ddl(ddl), "rows": rows, "sha256": digest}
        for (name,) in _query(db_conn_args, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                                            "WHERE TRIGGER_SCHEMA = '%s' ORDER BY 1" % database):
            row = _query(db_conn_args, "SHOW CREATE TRIGGER `%s`.`%s`" % (database, name))[0]
            entry["triggers"][name] = row[1:6]  # without 'Created' (a timestamp of the load)
        for name, kind in _query(db_conn_args, "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES "
                                               "WHERE ROUTINE_SCHEMA = '%s' ORDER BY 1, 2" % database):
            row = _query(db_conn_args, "SHOW CREATE %s `%s`.`%s`" % (kind, database, name))[0]
            entry["routines"]["%s %s" % (kind, name)] = row[1:]
        for (name,) in _query(db_conn_args, "SELECT EVENT_NAME FROM information_schema.EVENTS "
                                            "WHERE EVENT_SCHEMA = '%s' ORDER BY 1" % database):
            row = _query(db_conn_args, "SHOW CREATE EVENT `%s`.`%s`" % (database, name))[0]
            entry["events"][name] = row[1:]
        result[database] = entry
    return result


def _order_columns(db_conn_args: Optional[dict], database: str, table: str) -> str:
    """ORDER BY list: the primary key, or every column when a table has none."""
    rows = _query(db_conn_args, "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '%s' "
                                "AND TABLE_NAME = '%s' AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX"
                  % (database, table))
    if not rows:
        rows = _query(db_conn_args, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '%s' "
                                    "AND TABLE_NAME = '%s' ORDER BY ORDINAL_POSITION" % (database, table))
    return ", ".join("`%s`" % row[0] for row in rows)


# =============================================================================== public entry points
def seed(root: str, size_bytes: int, seed: int, db_conn_args: Optional[dict]) -> dict:
    """Fill root and (unless db_conn_args is None) the databases; returns what was made and timings."""
    started = time.monotonic()
    files = seed_files(root, size_bytes, seed)
    files_seconds = time.monotonic() - started
    summary = {"root": os.path.realpath(root), "seed": seed, "size_bytes": size_bytes, "files": files,
               "databases": None, "seconds": {"files": round(files_seconds, 2)}}
    total = files["total_bytes"]
    if db_conn_args is not None:
        started = time.monotonic()
        summary["databases"] = seed_databases(db_conn_args, size_bytes, seed)
        summary["seconds"]["databases"] = round(time.monotonic() - started, 2)
        total += summary["databases"]["innodb_bytes"]
    summary["total_bytes"] = total
    return summary


def fingerprint(root: str, db_conn_args: Optional[dict]) -> dict:
    """{"files": fingerprint_files(root), "databases": fingerprint_databases(...) or None}."""
    return {"files": fingerprint_files(root),
            "databases": None if db_conn_args is None else fingerprint_databases(db_conn_args)}


def _conn_args_from_cli(options) -> Optional[dict]:
    if options.no_db:
        return None
    conn = {"defaults_file": options.defaults_file, "socket": options.socket, "host": options.host,
            "port": options.port, "user": options.user}
    if not any(conn.values()):
        if not os.environ.get(DEFAULTS_FILE_ENV):
            raise SystemExit("no database connection: give --defaults-file, --socket or --host, "
                             "set %s, or pass --no-db" % DEFAULTS_FILE_ENV)
        conn["defaults_file"] = os.environ[DEFAULTS_FILE_ENV]
    return conn


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.reference", description=__doc__.split("\n", maxsplit=1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("seed", "fingerprint"):
        command = commands.add_parser(name)
        command.add_argument("--root", required=True, help="folder standing in for the appliance's /")
        connection = command.add_mutually_exclusive_group()
        connection.add_argument("--defaults-file", help="MariaDB client defaults file (holds the password)")
        connection.add_argument("--socket", help="MariaDB unix socket")
        connection.add_argument("--host", help="MariaDB host (TCP)")
        command.add_argument("--port", type=int, help="MariaDB TCP port (with --host)")
        command.add_argument("--user", help="MariaDB user (no password option: use a defaults file)")
        command.add_argument("--no-db", action="store_true", help="files only")
        if name == "seed":
            command.add_argument("--size", required=True, type=parse_size, help="e.g. 20MB, 2GB")
            command.add_argument("--seed", type=int, default=1)
        else:
            command.add_argument("--mtime", action="store_true", help="include file mtimes")
    options = parser.parse_args(argv)
    conn = _conn_args_from_cli(options)
    try:
        if options.command == "seed":
            os.makedirs(options.root, exist_ok=True)
            result = seed(options.root, options.size, options.seed, conn)
        else:
            result = {"files": fingerprint_files(options.root, include_mtime=options.mtime),
                      "databases": None if conn is None else fingerprint_databases(conn)}
    except ReferenceSeedError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
