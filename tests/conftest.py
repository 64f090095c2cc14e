"""pytest wiring: make the collection importable as ansible_collections.segura.backup."""

import os
import sys

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
