# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Bringing a snapshot back onto an appliance: safely, verified before and after.

Order of work, and why:
1. select the snapshot (latest complete, or by id) of this appliance; another appliance's snapshot
   only when the caller says so explicitly;
2. preflight (all that check mode runs): the object's size against the sidecar, then pass 1 streams
   the whole object once - its sha256 against the sidecar (quick check) and every member against
   manifest.json (deep check; the manifest is the LAST member, so nothing can be trusted before the
   end) - plus the member rules of a restore (names, paths, symlink targets), the order of the
   databases in the dump, the application version, free space, and what on disk would be replaced;
3. pre commands (e.g. stop Segura's services); a failing one aborts before anything is written;
4. pass 2 streams the object again and restores as it goes, re-checking every member against the
   manifest of pass 1 BEFORE it is used: dump chunks are fed to ONE ``mariadb`` client, files are
   written to a temporary name, hashed, compared and renamed into place;
5. session recordings (optional) are copied back from the target, verified;
6. post-verification: every restored file on disk against the manifest, and the databases re-dumped
   and compared with the dump in the snapshot (comment lines aside);
7. post commands (e.g. start the services), only when everything above succeeded.

This package: ``request`` (what to restore, and from which snapshot), ``plan`` (pass 1: the
preflight), ``tree`` (writes that never follow a link), ``logical`` (the dump loader),
``sessions``, ``apply`` (pass 2), ``check`` (the post-verification), ``commands`` (pre/post).
"""
