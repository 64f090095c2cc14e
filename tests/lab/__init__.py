# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab: real SMB (smbd), NFS (nfs-ganesha) and MariaDB servers for integration tests and demos.

Run from the repository root: ``.venv/bin/python -m tests.lab up|down|status|env [--state DIR]``.
"""
