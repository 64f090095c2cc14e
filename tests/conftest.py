"""pytest wiring: make the collection importable as ansible_collections.segura.backup."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


def _link_collection():
    """Expose the repository root as ansible_collections/segura/backup (a symlink under .build/)."""
    ns = os.path.join(COLLECTIONS, "ansible_collections", "segura")
    link = os.path.join(ns, "backup")
    if not os.path.islink(link):
        os.makedirs(ns, exist_ok=True)
        os.symlink(os.path.relpath(ROOT, ns), link)
    for path in (COLLECTIONS, ROOT):
        if path not in sys.path:
            sys.path.insert(0, path)


_link_collection()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs mounted for this test (a full disk made honestly, needs root); unmounted afterwards."""
    mountpoint = str(tmp_path / "tmpfs")
    os.makedirs(mountpoint)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", mountpoint], check=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=False, timeout=60)
