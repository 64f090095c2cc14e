"""When a physical restore may extract while it verifies (restore/streamed.py), and what it refuses to feed."""

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.streamed import StreamedExtraction, why_not_streamed
from tests.unit.test_catalog import RECIPIENT, make_sidecar

NAME = "20261127T101500Z-1a2b3c4d.tar.zst.age"
PINNED = {"mode": "x25519", "recipients": [RECIPIENT], "prelude_sha256": "c" * 64}
PHYSICAL_DB = {"chunks": 2, "bytes": 10, "sha256": "a" * 64, "method": "physical"}
VALID = {"status": "valid"}


def sidecar(**changes):
    return make_sidecar(NAME, b"payload", **dict({"encryption": PINNED, "db": PHYSICAL_DB}, **changes))


@pytest.mark.parametrize("case, reason", [
    (dict(components=["config"]), "no database is restored"),
    (dict(db=dict(PHYSICAL_DB, method="logical")), "not a physical backup"),
    (dict(signature={"status": "unsigned"}), "not signed by a pinned key"),
    (dict(encryption={"mode": "passphrase", "recipients": [], "prelude_sha256": "c" * 64}), "not encrypted to X25519"),
    (dict(encryption={"mode": "x25519", "recipients": [RECIPIENT]}), "does not record the age header"),
])
def test_two_passes_unless_signed_x25519_physical_with_a_pinned_header(case, reason):
    case = dict(case)
    components = case.pop("components", ["database", "config"])
    signature = case.pop("signature", VALID)
    assert why_not_streamed(sidecar(), VALID, ["database"]) is None
    found = why_not_streamed(sidecar(**case), signature, components)
    assert found is not None and reason in found


@pytest.mark.parametrize("name", ["db/backup.mbstream.000001", "db/dump.sql.000000", "db/backup.mbstream.0"])
def test_a_chunk_out_of_order_is_refused_before_mbstream_starts(name):
    extraction = StreamedExtraction(request=None, setup=None, prelude_sha256="c" * 64, limits=PHYSICAL_DB)
    with pytest.raises(IntegrityError, match="not the next of the 2 physical chunks"):
        extraction.feed(name, None)
    assert extraction.restorer is None and extraction.fed == []


def test_more_chunks_than_the_signed_sidecar_records_are_refused():
    extraction = StreamedExtraction(request=None, setup=None, prelude_sha256="c" * 64, limits=dict(PHYSICAL_DB, chunks=0))
    with pytest.raises(IntegrityError):
        extraction.feed("db/backup.mbstream.000000", None)
    assert extraction.restorer is None
