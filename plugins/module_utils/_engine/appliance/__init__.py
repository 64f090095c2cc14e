# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""What a Segura appliance is, and how to read it (facts about Segura: shared/SEGURA.md; guesses are
marked *inferred*).

- ``layout``: where things live, relative to a root ('/' on a real appliance, a temp folder in the lab);
- ``mariadb``: how the MariaDB client tools connect (credentials only through an option file);
- ``dump``: one streaming ``mariadb-dump --single-transaction`` of both databases;
- ``files``: config files and the secrets staging folder, in a deterministic order;
- ``facts``: what ``appliance_info`` and the preflight report.
"""
