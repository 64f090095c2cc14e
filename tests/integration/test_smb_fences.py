"""Which SMB write path runs, against the lab's real Samba, and that every path writes the same bytes.

The hand-built SMB2 frames (the WRITE fast path and put_files' compounds) are used only with the
smbprotocol releases they were tested with (smb.SMBPROTOCOL_FAST_PATHS) and, on an encrypted session,
with a cryptography that has AEAD ``encrypt_into`` (44 and later; 43 is the floor of requirements.txt).
Anything else takes smbprotocol's own calls. These tests run in .venv (the CI pins) and again on the
floor versions through tests/integration/test_runtime_floors.py (Python 3.11 and 3.9).
Run: .venv/bin/pytest -q tests/integration/test_smb_fences.py
"""

import hashlib
import os

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target, smb, smb_dirs
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Upload

MiB = 1024 * 1024


def _has_encrypt_into():
    from cryptography.hazmat.primitives.ciphers import aead

    return hasattr(aead.AESGCM, "encrypt_into")


@pytest.fixture(params=["smb_encrypted", "smb_signed"])
def share(request, lab_target_factory):
    made = lab_target_factory(request.param)
    with open_target(made.options) as target:
        yield made, target


def payload(size, seed=b"fence"):
    block = hashlib.sha256(seed).digest()
    return (block * (size // len(block) + 1))[:size]


def write(target, relpath, data):
    """Write ``data`` in uneven pieces; return whether the fast path carried it."""
    handle = target.open_write(relpath)
    fast = handle._fast is not None
    for start in range(0, len(data), 700_001):
        handle.write(data[start:start + 700_001])
    handle.close()
    return fast


def behind(made, relpath):
    with open(os.path.join(made.server_dir, relpath), "rb") as handle:
        return handle.read()


def test_installed_versions_choose_the_path(share):
    """Here and now: the fast path exactly when the installed smbprotocol and cryptography allow it."""
    made, target = share
    data = payload(3 * MiB + 17)
    fast = write(target, "installed.bin", data)
    expected = smb.fast_paths_allowed() and (made.kind == "smb_signed" or _has_encrypt_into())
    assert fast == expected, (smb._smbprotocol_version(), made.kind, _has_encrypt_into())
    assert behind(made, "installed.bin") == data


def test_smbprotocol_outside_the_tested_range_takes_the_generic_path(share, monkeypatch):
    made, target = share
    for version in ((1, 16, 0), (2, 0, 0), ()):
        monkeypatch.setattr(smb, "_smbprotocol_version", lambda version=version: version)
        assert not smb.fast_paths_allowed()
        assert not smb._CompoundPuts.usable()
        name = "generic-%s.bin" % ".".join(map(str, version or ("none",)))
        data = payload(2 * MiB + 5, name.encode())
        assert write(target, name, data) is False
        assert behind(made, name) == data
    uploads = [Upload("many/%03d.arz" % index, payload(index * 1000, b"%d" % index)) for index in range(40)]
    results = list(target.put_files(uploads))
    assert all(exists is None for _upload, exists in results) and len(results) == 40
    assert target._put_mode is None  # never switched to compounds: put_files took Target.put_files
    for upload in uploads:
        assert behind(made, upload.remote) == upload.data


def test_encrypted_session_without_encrypt_into_takes_the_generic_path(lab_target_factory, monkeypatch):
    """What cryptography 43 (Python 3.9.0/3.9.1's newest) does, forced here on any version."""
    made = lab_target_factory("smb_encrypted")

    def refuse(self, size):
        raise smb._NotCovered("cryptography without AEAD encrypt_into")

    with open_target(made.options) as target:
        monkeypatch.setattr(smb._Seal, "_setup_encryption", refuse)
        data = payload(2 * MiB + 3)
        assert write(target, "no-encrypt-into.bin", data) is False
        assert behind(made, "no-encrypt-into.bin") == data


# -- listdir: the QUERY_DIRECTORY replies parsed by smb_dirs, or by smbprotocol -------------------


def _fill_folder(made, count):
    """``count`` files of varied names and sizes and two folders, made behind the share (seconds, not minutes)."""
    folder = os.path.join(made.server_dir, "listing")
    os.makedirs(os.path.join(folder, "sub-é"))
    os.makedirs(os.path.join(folder, "sub.2"))
    for number in range(count):
        name = "%s-%05d%s.json" % ("snapshot" * (number % 4), number, "ü€" if number % 7 == 0 else "")
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(b"x" * (number * 37 % 5000))
        os.utime(os.path.join(folder, name), ns=(0, 1_700_000_000_123_456_789 + number * 1_000_003))
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return sorted(os.listdir(folder))


def _listing(options, mode, monkeypatch=None, credits=None):
    with open_target(options) as target:
        target._list_mode = mode
        if credits is not None:
            monkeypatch.setattr(smb_dirs, "_MAX_CREDITS", credits)
        entries = target.listdir("listing")
        return sorted((e.name, e.is_dir, e.size, e.mtime) for e in entries), target._list_mode


def test_fast_listing_equals_smbprotocols_own(share, monkeypatch):
    """Names (non-ASCII too), folders, sizes and times to the microsecond: both parsers agree, over
    one large reply and over many 64 KiB ones."""
    made, target = share
    assert smb.fast_paths_allowed(), "the CI pins and floors are inside the tested range"
    names = _fill_folder(made, 3000)
    generic, mode = _listing(made.options, "generic")
    assert mode == "generic" and [entry[0] for entry in generic] == names
    assert dict((e[0], e[1]) for e in generic)["sub-é"] is True
    for credits in (None, 1):
        fast, mode = _listing(made.options, None, monkeypatch, credits)
        assert mode == ("fast" if smb.fast_paths_allowed() else "generic")
        assert fast == generic


def test_a_reply_the_fast_parser_refuses_falls_back_to_smbprotocol(share, monkeypatch):
    made, target = share
    names = _fill_folder(made, 50)

    def refuse(body):
        raise smb_dirs.MalformedListing("a reply this test made up")

    monkeypatch.setattr(smb_dirs, "_entries", refuse)
    with open_target(made.options) as fresh:
        assert smb.fast_paths_allowed(), "the CI pins and floors are inside the tested range"
        assert sorted(e.name for e in fresh.listdir("listing")) == names
        assert fresh._list_mode == "generic"  # and stays so for this connection


def test_listing_outside_the_tested_range_is_smbprotocols(share, monkeypatch):
    made, target = share
    names = _fill_folder(made, 20)
    monkeypatch.setattr(smb, "_smbprotocol_version", lambda: (2, 0, 0))
    with open_target(made.options) as fresh:
        assert sorted(e.name for e in fresh.listdir("listing")) == names
        assert fresh._list_mode == "generic"
