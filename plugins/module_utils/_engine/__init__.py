# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection: the engine behind its modules and its scheduled job.
# It can change in any release. Do not import it from other collections, roles or plugins; use the
# modules (ansible-doc segura.backup.<module>) or the scheduled job instead.
"""The engine of segura.backup: plain Python, no Ansible import except in ``specs`` (see docs/architecture.md)."""
