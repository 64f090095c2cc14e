# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""A physical restore that extracts while it verifies: the object is read once instead of twice.

Why it is safe. The manifest comes last, so without more a reader knows the object is the writer's
only at its end, and a restore reads it twice (verify, then use). A signed sidecar that records the
sha256 of the object's age header and payload nonce (``encryption.prelude_sha256``) pins the file
key: whoever replaced the object on the share cannot make one chunk decrypt under it without a
decryption key. So each chunk is the writer's as soon as it decrypts, and pass 1 may feed the physical backup to ``mbstream
-x`` in the staging folder beside the datadir while it verifies. Nothing live is touched before pass 1
ended with every check passed; any failure removes the staging folder (``discard``). Snapshots
without that record, unsigned ones, unencrypted ones and passphrase ones keep the two passes: every
appliance holds the passphrase, so one taken over could write chunks under another's pinned header.
What is fed is also held to the signed sidecar's chunk count and bytes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import PHYSICAL
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import PHYSICAL_PREFIX
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.sidecar import Sidecar
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.physical import PhysicalRestore, PhysicalSetup, physical_preflight
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest


def why_not_streamed(sidecar: Sidecar, signature: Dict[str, Any], components: Sequence[str]) -> Optional[str]:
    """Why this restore keeps two passes (None: pass 1 may extract the physical backup)."""
    if "database" not in components:
        return "no database is restored"
    if (sidecar.db or {}).get("method") != PHYSICAL:
        return "the snapshot's databases are not a physical backup"
    if signature.get("status") != "valid":
        return "the snapshot is not signed by a pinned key"
    if sidecar.encryption.get("mode") != "x25519":
        return "the snapshot is not encrypted to X25519 recipients (a passphrase is held by every appliance)"
    if not sidecar.prelude_sha256:
        return "the sidecar does not record the age header (a snapshot taken before this was recorded)"
    return None


class StreamedExtraction:
    """The physical backup fed to ``mbstream -x`` during pass 1 (see the module doc)."""

    def __init__(self, request: RestoreRequest, setup: PhysicalSetup, prelude_sha256: str, limits: Dict[str, Any]):
        self.request = request
        self.setup = setup
        self.prelude_sha256 = prelude_sha256
        self.max_chunks = int(limits.get("chunks", 0))  # the signed sidecar's db record
        self.max_bytes = int(limits.get("bytes", 0))
        self.restorer: Optional[PhysicalRestore] = None
        self.fed: List[str] = []  # chunk names, in the order fed

    @classmethod
    def prepare(cls, request: RestoreRequest, sidecar: Sidecar) -> Optional["StreamedExtraction"]:
        """The extraction, when the physical preflight passes on the signed sidecar's word (else None:
        pass 1 only verifies, and the preflight after it reports the problems)."""
        db = sidecar.db or {}
        setup = physical_preflight(request, db, int(db.get("bytes", 0)))
        if setup.problems or not sidecar.prelude_sha256:
            return None
        return cls(request, setup, sidecar.prelude_sha256, db)

    def feed(self, name: str, content: Any) -> None:
        """One physical chunk, as it decrypts; mbstream starts at the first one. Chunks beyond the signed
        sidecar's count or bytes, or out of order, are refused (IntegrityError; the caller discards)."""
        if name != "%s.%06d" % (PHYSICAL_PREFIX, len(self.fed)) or len(self.fed) >= self.max_chunks:
            raise IntegrityError("%s is not the next of the %d physical chunks the signed sidecar records"
                                 % (name, self.max_chunks))
        if self.restorer is None:
            self.restorer = PhysicalRestore(self.request, self.setup, self.request.layout.databases).start()
        self.restorer.feed(content)
        self.fed.append(name)
        if self.restorer.bytes > self.max_bytes:
            raise IntegrityError("the physical backup holds more than the %d bytes the signed sidecar records"
                                 % self.max_bytes)

    def agrees_with(self, record: Dict[str, Any], sidecar_db: Dict[str, Any]) -> bool:
        """The manifest's database record names the versions the preflight checked (the signed sidecar's)."""
        return all(record.get(key) == sidecar_db.get(key) for key in ("method", "server_version", "tool_version"))

    def discard(self) -> None:
        """Stop mbstream and remove the staging folder (nothing live was touched)."""
        if self.restorer is not None and not self.restorer.swapped:
            self.restorer.abort()
        self.restorer = None
        self.fed = []
