# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Future-dated snapshots; the future_tolerance option of plugins/module_utils/_engine/specs.py (tests/unit/test_house.py compares them).
    DOCUMENTATION = r"""
options:
  future_tolerance:
    description:
      - A snapshot dated more than this ahead of now is I(future-dated) - an appliance clock that ran ahead, or a
        snapshot planted on the target. It is never taken as the latest (by M(segura.backup.backup_info),
        M(segura.backup.verify) and M(segura.backup.restore)), only by its id, with a warning; retention keeps
        it aside (never removed, never the newest, counted by no rule) until now catches up with its date.
      - A duration as C(1h), C(2d) or C(1w), or whole seconds as C(900).
    type: str
    default: 1h
"""
