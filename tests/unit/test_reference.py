"""The reference appliance generator, files part: deterministic, sized as asked, shaped like Segura."""

import os
import stat

import pytest
import zstandard

from tests.lab import reference

MB = 1000 ** 2


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Two roots seeded alike (seed 1) and one with seed 2, all 6 MB."""
    roots = {}
    for name, seed in (("first", 1), ("again", 1), ("other", 2)):
        root = str(tmp_path_factory.mktemp(name))
        roots[name] = (root, reference.seed(root, 6 * MB, seed, None))
    return roots


def test_same_seed_gives_identical_files_and_mtimes(seeded):
    first = reference.fingerprint_files(seeded["first"][0], include_mtime=True)
    again = reference.fingerprint_files(seeded["again"][0], include_mtime=True)
    assert first == again
    assert len(first) > 20


def test_different_seed_gives_different_files(seeded):
    first = reference.fingerprint_files(seeded["first"][0])
    other = reference.fingerprint_files(seeded["other"][0])
    assert first != other
    # Not just one file: every recording's content depends on the seed.
    shared = [path for path in first if path.endswith(".arz") and path in other]
    assert all(first[path]["sha256"] != other[path]["sha256"] for path in shared)


def test_reseeding_a_root_replaces_the_old_content(tmp_path, seeded):
    root = str(tmp_path)
    reference.seed(root, 3 * MB, 2, None)
    reference.seed(root, 6 * MB, 1, None)
    assert reference.fingerprint(root, None) == reference.fingerprint(seeded["first"][0], None)


def test_fingerprint_top_level_shape(seeded):
    assert reference.fingerprint(seeded["first"][0], None) == {
        "files": reference.fingerprint_files(seeded["first"][0]), "databases": None}


@pytest.mark.parametrize("size", [2 * MB, 20 * MB, 75 * MB])
def test_file_sizes_follow_the_size_parameter(tmp_path, size):
    summary = reference.seed_files(str(tmp_path), size, 5)
    on_disk = sum(entry["size"] for entry in reference.fingerprint_files(str(tmp_path)).values()
                  if entry["type"] == "file")
    assert on_disk == summary["total_bytes"]
    assert summary["recordings"]["bytes"] == int(size * reference.SHARE_RECORDINGS)
    assert summary["coba"]["bytes"] == int(size * reference.SHARE_COBA)
    files_share = reference.SHARE_RECORDINGS + reference.SHARE_COBA
    assert abs(summary["total_bytes"] - size * files_share) < 0.01 * size


def test_appliance_shape(seeded):
    root, summary = seeded["first"]
    files = reference.fingerprint_files(root)
    recordings = [path for path in files if path.endswith(".arz")]
    assert len(recordings) == summary["files"]["recordings"]["count"] >= 10
    days = {os.path.dirname(path) for path in recordings}
    assert len(days) == reference.RECORDING_DAYS
    assert {path.split("/")[3] for path in recordings} == {"2024", "2025"}  # YYYY/MMDD across a year end
    sizes = {files[path]["size"] for path in recordings}
    assert len(sizes) > len(recordings) // 2  # varied sizes
    assert files["etc/senhasegura/política de retenção.conf"]["type"] == "file"
    assert files["etc/senhasegura/conf.d/local/overrides.conf"]["size"] == 0
    assert files["etc/senhasegura/conf.d/local"]["type"] == "dir"
    assert files["etc/senhasegura/active.conf"] == {"type": "symlink", "target": "senhasegura.conf"}
    assert files["var/senhasegura/orbinibkp.conf"]["mode"] == "0640"
    assert files["etc/mysql/conf.d/galera.cnf"]["type"] == "file"
    coba = [path for path in files if path.startswith("srv/cache/coba/") and files[path]["type"] == "file"]
    assert len(coba) == 3 and all(files[path]["mode"] == "0600" for path in coba)
    with open(os.path.join(root, coba[0]), "rb") as handle:
        assert handle.read(8) == b"Salted__"


def test_recordings_are_incompressible(seeded):
    root = seeded["first"][0]
    recording = next(path for path in reference.fingerprint_files(root) if path.endswith(".arz"))
    with open(os.path.join(root, recording), "rb") as handle:
        data = handle.read()
    assert len(zstandard.ZstdCompressor(level=3).compress(data)) > 0.99 * len(data)


def test_fingerprint_sees_content_mode_and_link_changes(tmp_path):
    root = str(tmp_path)
    reference.seed_files(root, 2 * MB, 9)
    before = reference.fingerprint_files(root)
    conf = os.path.join(root, "var/senhasegura/orbinibkp.conf")

    os.chmod(conf, 0o600)
    assert reference.fingerprint_files(root) != before
    os.chmod(conf, 0o640)
    assert reference.fingerprint_files(root) == before

    recording = os.path.join(root, next(path for path in before if path.endswith(".arz")))
    with open(recording, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 1]))
    changed = reference.fingerprint_files(root)
    assert changed != before
    assert changed[os.path.relpath(recording, root)]["size"] == before[os.path.relpath(recording, root)]["size"]

    link = os.path.join(root, "etc/senhasegura/active.conf")
    os.unlink(link)
    os.symlink("política de retenção.conf", link)
    assert reference.fingerprint_files(root)["etc/senhasegura/active.conf"]["target"] != "senhasegura.conf"


def test_mtimes_are_fixed(tmp_path):
    root = str(tmp_path)
    reference.seed_files(root, 2 * MB, 4)
    files = reference.fingerprint_files(root, include_mtime=True)
    recording = next(path for path in files if path.endswith(".arz"))
    day = os.path.dirname(recording)  # .../YYYY/MMDD
    assert os.lstat(os.path.join(root, recording)).st_mtime < 1767225600  # before 2026: not "now"
    assert stat.S_ISDIR(os.lstat(os.path.join(root, day)).st_mode)
    assert os.lstat(os.path.join(root, day)).st_mtime < 1767225600


def test_refuses_the_real_root():
    with pytest.raises(reference.ReferenceSeedError):
        reference.seed_files("/", MB, 1)


@pytest.mark.parametrize("text, value", [("20MB", 20 * MB), ("1.5GB", 1500 * MB), ("512MiB", 512 << 20),
                                         ("4096", 4096), ("3 kb", 3000)])
def test_parse_size(text, value):
    assert reference.parse_size(text) == value


def test_parse_size_rejects_nonsense():
    with pytest.raises(ValueError):
        reference.parse_size("twenty")
