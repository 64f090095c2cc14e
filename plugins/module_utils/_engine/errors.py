# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the engine.

Every failure a person can cause ends in exactly one of these, with a message that names the cause
in words an administrator understands. Messages never contain secrets: callers must not put a
password, passphrase or private key into them.
"""

from __future__ import annotations


class BackupError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(BackupError):
    """Invalid options: bad paths, unknown components, keys that are not keys."""


class TargetError(BackupError):
    """The target could not be reached or used (host down, share or export missing, I/O failure)."""


class TargetAuthError(TargetError):
    """The target refused the credentials."""


class TargetNotFound(TargetError):
    """A path on the target does not exist."""


class TargetExists(TargetError):
    """A path on the target already exists where it must not."""


class TargetInUse(TargetError):
    """Another client holds the file open in a way that refuses ours (SMB STATUS_SHARING_VIOLATION)."""


class TargetFull(TargetError):
    """The target ran out of space (or quota)."""


class LockBusy(BackupError):
    """Another run holds the appliance's lock on the target."""


class LockLost(LockBusy):
    """The run's own lock was taken over or removed while it ran (it stalled past the ttl, or the lock
    was broken): it stops, and acts on nothing more (publishes nothing, removes nothing)."""


class ApplianceError(BackupError):
    """The appliance could not be read: database dump failed, a path is missing or unreadable."""


class ArchiveError(BackupError):
    """An archive could not be written or read: bad key, corrupt or tampered data, unsafe member."""


class IntegrityError(ArchiveError):
    """Data does not match what the manifest or sidecar promises (size, sha256, member set)."""
