# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lock per appliance on the target, so two runs (snapshot, prune, restore) never interleave.

The lock is the file ``<appliance>/lock``, created exclusively and whole (written beside, then renamed
into place without replacing), holding JSON
{run_id, host, pid, started, expires, token}. Used as a context manager, the holder extends ``expires``
on a timer thread (every ``refresh_interval``, ttl / 6 by default), never on its write path: a run
stalled in its source (a dump waiting on a table) or in a slow write keeps its lock. The run itself
calls ``check()`` (no I/O: raises LockLost once the timer found the lock taken) as it goes, and
``confirm()`` right before it acts on what it found (publishing a sidecar, removing snapshots): a fresh
refresh that checks the owner token, so a run whose lock was taken over anyway (stalled as a whole past
the ttl: a paused VM, a stopped process) acts on nothing. Releasing after the work is done never fails
the run: ``release_warning`` says why the lock stayed (it expires by itself). A lock whose ``expires`` has
passed belongs to a run that died; the next run takes it over. So does a lock whose holder ran on
this very kernel and pid namespace (same boot id and namespace, recorded as ``process``) and is gone:
its pid no longer exists, or now belongs to a process started at another time (a reused pid). That
is judged at once, without waiting for the ttl; a lock from anywhere else keeps the ttl rule.

Why the takeover is safe against several takers at once (the target offers exclusive create and
rename, but no compare-and-swap):
1. Each taker reads the lock (content S) and judges it expired.
2. Each tries to create, exclusively, a takeover marker named after S: ``lock.takeover-<sha256(S)>-0``.
   Exclusive create succeeds for exactly one of them; the others report the lock busy.
3. The marker's owner reads the lock again. Only if it is still S does it replace it with its own
   lock in one rename (written beside, so the lock file is never absent or half written); otherwise
   the lock changed meanwhile (released, or already taken over) and it starts again.
4. It then removes its marker. A late taker that still holds the old S can now create the marker,
   but its re-read (step 3) finds a lock that is no longer S, so it does nothing.
A holder whose own lock has expired never touches the lock file again (no refresh, no release), so
while the file holds an expired S only the marker's owner may change it. A marker whose owner died
mid-takeover expires like a lock; the next taker then uses the next number (``-1``, ``-2``...),
because a marker is never removed while the takeover it guards may still happen: each number is
created once, which keeps exclusive create a one-time decision.
Ownership is a random ``token`` (not the run_id, which a caller may reuse), checked by ``refresh()``
and ``release()``: a run never refreshes or removes a lock that is not its own.

Readers never stand in the holder's way for long: on SMB our readers share read, write and delete, and
Samba refuses to rename over a file any client holds open (another run judging the lock, a person's
client), so a refresh or release that meets such a reader (TargetInUse) is retried a few times over
about three seconds. A timer refresh that still fails is tried again at the next tick (the ttl leaves
room for five); ``confirm()`` accepts a lock it could not rewrite when it is still ours for at least
half the ttl.

Appliance names that differ only in case share one folder on SMB (case-insensitive), so their runs would
mix files and one's prune would remove the other's snapshots: ``acquire()`` refuses a name whose folder
would collide with a differently cased appliance folder on the target (``refuse_case_variant``).

Limits, by design: expiry compares the writer's clock (written into the file) with the reader's
clock, so hosts need roughly synchronised clocks (ttl is minutes, skew should be seconds), and a
taker must not stall for longer than the ttl between steps 2 and 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import secrets
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import format_utc, lock_path, parse_utc
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ConfigError,
    LockBusy,
    LockLost,
    TargetError,
    TargetExists,
    TargetInUse,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.holders import holder_is_gone, process_identity
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import AtomicRenameUnsupported, Target

DEFAULT_TTL = timedelta(minutes=30)
_LOCK_LIMIT = 64 * 1024
_MAX_ATTEMPTS = 4  # create / judge / take over rounds before giving up on a lock that keeps changing
_MAX_MARKERS = 8  # takeovers of one stale lock that may die midway before we ask for a person
_CREATING = ".creating"  # suffix of a lock (or marker) being written beside before its rename into place
_REPLACING = ".new"  # suffix of a refreshed lock being written beside before it replaces the lock
#: Pauses between attempts to rename over, or remove, a lock that a reader holds open (SMB): ~3 s in all.
_IN_USE_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_MIN_TICK = 0.01  # the timer's shortest interval, seconds (tests use 50 ms; runs use ttl / 6)
_STOP_WAIT = 120.0  # seconds to wait for the timer's refresh in flight when the lock is let go


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def case_variants(names: Iterable[str], appliance: str) -> List[str]:
    """The names among ``names`` that differ from ``appliance`` only in case."""
    folded = appliance.casefold()
    return sorted(name for name in names if name != appliance and name.casefold() == folded)


def refuse_case_variant(target: Target, appliance: str, names: Optional[Iterable[str]] = None) -> None:
    """ConfigError when the target holds an appliance folder whose name differs from ``appliance`` only
    in case: on SMB (case-insensitive) both would be one folder, so their snapshots would mix and one's
    prune would remove the other's. Refused on every target, so a name means the same everywhere.
    ``names``: the folders below the root when the caller listed them already (else one listing)."""
    if names is None:
        try:
            names = [entry.name for entry in target.listdir("") if entry.is_dir]
        except TargetNotFound:
            return
    others = case_variants(names, appliance)
    if others:
        raise ConfigError(
            "appliance name %r differs only in case from %s, which %s already holds: SMB ignores case, so "
            "both would share one folder (their snapshots would mix, and one's prune would remove the "
            "other's); refusing to use %r there (spell the appliance name exactly as on the target, or use "
            "another target)" % (appliance, ", ".join(repr(other) for other in others), target.describe(), appliance))


class ApplianceLock:
    """The lock of one appliance on one target. Use as a context manager, or acquire()/release().

    ``owner`` may give ``run_id``, ``host`` and ``pid`` (defaults: a random id, this host, this pid).
    As a context manager the lock refreshes itself on a timer thread every ``refresh_interval``
    (default ttl / 6) and lets it go on leaving; the run calls ``check()`` as it goes and ``confirm()``
    right before it publishes or removes. ``refresh()`` by hand rewrites the lock at most once per
    ``refresh_interval`` unless forced.
    """

    def __init__(
        self,
        target: Target,
        appliance: str,
        owner: Optional[Dict[str, Any]] = None,
        ttl: timedelta = DEFAULT_TTL,
        refresh_interval: Optional[timedelta] = None,
        clock: Callable[[], datetime] = _utc_now,
    ):
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise ConfigError("lock ttl must be a positive duration, got %r" % (ttl,))
        self.target = target
        self.appliance = appliance
        self.relpath = lock_path(appliance)
        owner = dict(owner or {})
        self.run_id = str(owner.get("run_id") or uuid.uuid4().hex)
        self.host = str(owner.get("host") or socket.gethostname())
        self.pid = int(owner.get("pid") or os.getpid())
        # Only our own pid can be vouched for (a caller-given pid may live elsewhere).
        self.process = process_identity(self.pid) if self.pid == os.getpid() else None
        self.ttl = ttl
        self.refresh_interval = refresh_interval if refresh_interval is not None else ttl / 6
        self.token = secrets.token_hex(16)
        self.held = False
        self.started: Optional[datetime] = None
        self.took_over: Optional[Dict[str, Any]] = None  # the stale lock we replaced, for reporting
        self.took_over_from_gone_run = False  # ... and its holder provably no longer runs (holder_is_gone)
        self._clock = clock
        self._last_write = 0.0
        self.lost: Optional[LockLost] = None  # set by the timer when it found the lock no longer ours
        self.release_warning: Optional[str] = None  # why the lock stayed after a run that succeeded
        self.refresh_failures = 0  # timer refreshes that failed for a passing reason (tried again)
        self.last_refresh_error: Optional[str] = None
        self._mutex = threading.RLock()  # the timer's refresh, confirm() and release() one at a time
        self._keeper: Optional[threading.Thread] = None
        self._tick = threading.Event()
        self._stopping = False
        self._in_use_delays = _IN_USE_DELAYS
        self._sleep = time.sleep

    # -- the lock file --------------------------------------------------------------------------

    def _content(self) -> bytes:
        now = self._clock()
        doc = {
            "appliance": self.appliance,
            "run_id": self.run_id,
            "host": self.host,
            "pid": self.pid,
            "process": self.process,
            "started": format_utc(self.started or now),
            "refreshed": format_utc(now),
            "expires": format_utc(now + self.ttl),
            "token": self.token,
        }
        return (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")

    def _read(self, relpath: str) -> Tuple[bytes, Optional[Dict[str, Any]]]:
        """Raw content and parsed document (None if unreadable); TargetNotFound if absent."""
        raw = self.target.read_bytes(relpath, limit=_LOCK_LIMIT)
        try:
            doc = json.loads(raw.decode("utf-8"))
            parse_utc(doc["expires"])
        except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
            return raw, None
        return raw, doc if isinstance(doc, dict) else None

    def peek(self) -> Optional[Dict[str, Any]]:
        """The lock as it is on the target (None if unreadable); TargetNotFound if there is none."""
        return self._read(self.relpath)[1]

    def _is_ours(self, doc: Optional[Dict[str, Any]]) -> bool:
        return doc is not None and doc.get("token") == self.token

    def _is_expired(self, doc: Optional[Dict[str, Any]], relpath: str) -> bool:
        """Stale: past its expiry, or its holder ran here and is gone (``holder_is_gone``)."""
        if doc is not None:
            return self._clock() >= parse_utc(doc["expires"]) or holder_is_gone(doc)
        # Unreadable: possibly being written this instant. Judge by age instead (server's mtime).
        try:
            age = self._clock().timestamp() - self.target.stat(relpath).mtime
        except TargetNotFound:
            return False
        return age > self.ttl.total_seconds()

    def _busy(self, doc: Optional[Dict[str, Any]], prefix: str = "") -> LockBusy:
        where = self.target.describe_path(self.relpath)
        if doc is None:
            return LockBusy("%sappliance %r is locked (%s exists but cannot be read; it is not older than %s)"
                            % (prefix, self.appliance, where, self.ttl))
        return LockBusy(
            "%sappliance %r is locked by host %s (pid %s, run %s) since %s, until %s (%s)"
            % (prefix, self.appliance, doc.get("host"), doc.get("pid"), doc.get("run_id"),
               doc.get("started"), doc.get("expires"), where)
        )

    # -- acquire / refresh / release ------------------------------------------------------------

    def acquire(self, break_if: Optional[Callable[[Optional[Dict[str, Any]]], bool]] = None) -> "ApplianceLock":
        """Take the lock, taking over an expired one; LockBusy if another run holds it.

        ``break_if`` (for breaking a lock by hand) judges a lock that is not stale: True takes it over
        too, by the same safe protocol, so a holder that is still alive finds at its next refresh that
        its lock was taken and stops.
        """
        if self.held:
            return self
        refuse_case_variant(self.target, self.appliance)
        self.started = self._clock()
        for dummy in range(_MAX_ATTEMPTS):
            if self._create():
                self.held = True
                self._last_write = time.monotonic()
                self._remove_strays()
                return self
            try:
                raw, doc = self._read(self.relpath)
            except TargetNotFound:
                continue  # released between our create and our read: try again
            except TargetInUse as exc:
                # Held open by its writer this instant (SMB): a lock being written is a live one.
                raise LockBusy("appliance %r is locked (%s is being written: %s)"
                               % (self.appliance, self.target.describe_path(self.relpath), exc)) from None
            broken = not self._is_expired(doc, self.relpath)
            if broken and not (break_if is not None and break_if(doc)):
                raise self._busy(doc)
            if self._take_over(raw, doc, broken):
                self.held = True
                self._last_write = time.monotonic()
                self._remove_strays()
                return self
        raise LockBusy("appliance %r: the lock %s kept changing; gave up after %d attempts"
                       % (self.appliance, self.target.describe_path(self.relpath), _MAX_ATTEMPTS))

    def _create(self) -> bool:
        """Create the lock exclusively: True if we made it, False if it exists."""
        return self._create_exclusive(self.relpath, self._content())

    def _create_exclusive(self, relpath: str, content: bytes) -> bool:
        """Create ``relpath`` holding ``content`` unless it exists (then False): whole or not at all.

        Written beside and renamed into place without replacing, so a run killed midway never leaves
        an empty or half-written lock (found by the kill matrix: ganesha killed right after the lock's
        write left an empty lock, which only its age can judge, so it blocked for the whole ttl).
        Where the target cannot rename without replacing atomically: exclusive create, then write.
        """
        if self.target.capabilities.atomic_no_replace_rename:
            fresh = "%s.%s%s" % (relpath, self.token[:16], _CREATING)
            renaming = False
            try:
                self.target.write_bytes(fresh, content)
                renaming = True
                self.target.rename(fresh, relpath, replace=False)
                return True
            except (TargetExists, TargetInUse):  # in use: a released lock a reader still holds open (SMB)
                self._remove_quietly(fresh)
                return False
            except TargetNotFound:
                return False  # the lock's holder removed our half-made file (_remove_strays): it is held
            except AtomicRenameUnsupported:
                self.target.capabilities.atomic_no_replace_rename = False
                self._remove_quietly(fresh)
            except BaseException:
                self._remove_quietly(fresh)
                if renaming:
                    self._remove_if_ours(relpath)  # the rename may have landed before the error (NFS: LINK, then REMOVE)
                raise
        try:
            handle = self.target.open_write(relpath, exclusive=True)
        except TargetExists:
            return False
        try:
            with handle:
                handle.write(content)
        except BaseException:
            # We created the file, so removing it cannot hurt anyone else.
            self._remove_quietly(relpath)
            raise
        return True

    def _remove_quietly(self, relpath: str) -> None:
        try:
            self.target.remove(relpath)
        except Exception:
            pass

    def _remove_if_ours(self, relpath: str) -> None:
        """Best effort, after an error: remove ``relpath`` if it holds our token (a lock we cannot report)."""
        try:
            if self._is_ours(self._read(relpath)[1]):
                self.target.remove(relpath)
        except Exception:
            pass

    def _remove_strays(self) -> None:
        """Holding the lock: remove the half-made lock files (``lock.*.creating``, ``lock.*.new``) of runs
        killed while writing them. Best effort: a failure here never costs the run."""
        folder = posixpath.dirname(self.relpath)
        prefix = posixpath.basename(self.relpath) + "."
        try:
            entries = self.target.listdir(folder)
        except Exception:
            return
        for entry in entries:
            name = entry.name
            if (not entry.is_dir and name.startswith(prefix) and name.endswith((_CREATING, _REPLACING))
                    and self.token[:16] not in name):
                self._remove_quietly("%s/%s" % (folder, name))

    def _take_over(self, stale_raw: bytes, stale_doc: Optional[Dict[str, Any]], broken: bool = False) -> bool:
        """Replace an expired lock whose content is ``stale_raw`` (see the module docstring).

        Returns True if the lock is now ours, False if it changed meanwhile (acquire() looks again),
        and raises LockBusy if another run is taking it over right now.
        """
        digest = hashlib.sha256(stale_raw).hexdigest()[:32]
        dead_markers = []
        for number in range(_MAX_MARKERS):
            marker = "%s.takeover-%s-%d" % (self.relpath, digest, number)
            if self._create_exclusive(marker, self._content()):
                break
            try:
                marker_doc = self._read(marker)[1]
            except TargetNotFound:
                return False  # its owner finished and cleaned up: the lock has changed, look again
            if not self._is_expired(marker_doc, marker):
                raise self._busy(stale_doc, prefix="host %s is taking over an expired lock: "
                                 % (marker_doc or {}).get("host", "?"))
            dead_markers.append(marker)
        else:
            raise LockBusy("appliance %r: %d takeovers of the expired lock %s died midway; remove %s.takeover-* by hand"
                           % (self.appliance, _MAX_MARKERS, self.target.describe_path(self.relpath), self.relpath))
        try:
            try:
                current = self.target.read_bytes(self.relpath, limit=_LOCK_LIMIT)
            except TargetNotFound:
                return False  # removed meanwhile: acquire() creates it normally
            if current != stale_raw:
                return False
            self._replace_lock()
            self.took_over_from_gone_run = holder_is_gone(stale_doc)
            reason = "it expired"
            if self.took_over_from_gone_run:
                reason = "its process is gone"
            elif broken:
                reason = "it was broken by request"
            self.took_over = dict(stale_doc or {"unreadable": True}, reason=reason)
            return True
        finally:
            for leftover in [marker] + dead_markers:
                self._remove_quietly(leftover)

    def _replace_lock(self) -> None:
        """Write our lock beside, then rename it over the lock file in one step."""
        fresh = "%s.%s%s" % (self.relpath, self.token[:16], _REPLACING)
        try:
            self.target.write_bytes(fresh, self._content())
            self._while_in_use(lambda: self.target.rename(fresh, self.relpath, replace=True))
        except BaseException:
            self._remove_quietly(fresh)
            raise

    def _while_in_use(self, action: Callable[[], Any]) -> Any:
        """``action()``, tried again (bounded: ``_IN_USE_DELAYS``) while a reader holds the lock open."""
        for delay in self._in_use_delays:
            try:
                return action()
            except TargetInUse:
                self._sleep(delay)
        return action()

    def _lost(self, message: str) -> LockLost:
        self.held = False
        return LockLost("appliance %r: %s" % (self.appliance, message))

    def refresh(self, force: bool = False) -> bool:
        """Extend the expiry (heartbeat). Returns True if the lock was rewritten.

        Raises LockBusy if the lock is no longer ours (removed, or taken over after we stalled past
        the ttl): the caller must stop, because another run may be writing.
        """
        with self._mutex:
            if not self.held:
                raise LockBusy("appliance %r: refresh() on a lock that is not held" % self.appliance)
            if not force and time.monotonic() - self._last_write < self.refresh_interval.total_seconds():
                return False
            self._read_own()
            try:
                self._replace_lock()
            except TargetNotFound:
                # Our file beside was removed by a new holder cleaning up (_remove_strays): the lock is theirs.
                raise self._lost("our lock %s was taken over while being refreshed; this run stops"
                                 % self.target.describe_path(self.relpath)) from None
            self._last_write = time.monotonic()
            return True

    def _read_own(self) -> Optional[Dict[str, Any]]:
        """The lock as it is, if it is still ours and not expired; LockLost (naming the cause) if not."""
        where = self.target.describe_path(self.relpath)
        try:
            doc = self._read(self.relpath)[1]
        except TargetNotFound:
            raise self._lost("our lock %s was removed by someone else (this run stalled past its ttl of %s, "
                             "or its lock was broken); this run stops" % (where, self.ttl)) from None
        if not self._is_ours(doc):
            raise self._lost("our lock was taken over by %s; this run stops" % self._holder(doc))
        if self._is_expired(doc, self.relpath):
            # Another run may be taking it over right now; an expired lock is not ours to touch.
            raise self._lost("our lock %s expired at %s before it was refreshed (this run stalled past its ttl of "
                             "%s); this run stops" % (where, (doc or {}).get("expires"), self.ttl))
        return doc

    def _holder(self, doc: Optional[Dict[str, Any]]) -> str:
        where = self.target.describe_path(self.relpath)
        if doc is None:
            return "another run (%s cannot be read)" % where
        return ("host %s (pid %s, run %s) since %s, until %s (%s)"
                % (doc.get("host"), doc.get("pid"), doc.get("run_id"), doc.get("started"), doc.get("expires"), where))

    def check(self) -> None:
        """Raise LockLost if the timer found that the lock is no longer ours (no I/O: call it often)."""
        lost = self.lost
        if lost is not None:
            raise lost

    def confirm(self, consequence: str = "nothing was published") -> None:
        """Right before acting (publishing a sidecar, removing snapshots): refresh the lock and check that
        it is still ours (owner token unchanged, not expired). LockLost naming the cause, and
        ``consequence``, when it is not. A lock that cannot be rewritten this moment (a reader holds it
        open on SMB) is enough while it is still ours for at least half the ttl."""
        with self._mutex:
            try:
                self.check()
                if not self.held:
                    raise self._lost("the lock is not held")
                try:
                    self.refresh(force=True)
                except LockLost:
                    raise
                except TargetError as exc:
                    doc = self._read_own()
                    left = parse_utc(doc["expires"]) - self._clock() if doc is not None else timedelta(0)
                    if left < self.ttl / 2:  # still ours, but too close to its end to act on
                        raise LockLost("appliance %r: our lock %s could not be refreshed (%s) and ends in %ds"
                                       % (self.appliance, self.target.describe_path(self.relpath), exc,
                                          left.total_seconds())) from None
            except LockLost as exc:
                if not self.held:
                    self.lost = self.lost or exc
                raise LockLost("%s; %s" % (exc, consequence)) from None
            except TargetError as exc:
                raise LockLost("appliance %r: cannot confirm that the lock %s is still ours (%s); %s"
                               % (self.appliance, self.target.describe_path(self.relpath), exc, consequence)) from None

    # -- the timer ------------------------------------------------------------------------------

    def start_refreshing(self) -> None:
        """Refresh the held lock on a timer thread until ``stop_refreshing()`` (or until it is lost)."""
        if self._keeper is not None or not self.held:
            return
        self._stopping = False
        self._keeper = threading.Thread(target=self._keep_alive, name="segura-lock-%s" % self.appliance, daemon=True)
        self._keeper.start()

    def _wake(self) -> None:
        """The timer's next tick, now (tests; stop_refreshing)."""
        self._tick.set()

    def _keep_alive(self) -> None:
        # Bounded by the holder: it ends at stop_refreshing() or at the first sign the lock is not ours.
        while True:
            self._tick.wait(max(self.refresh_interval.total_seconds(), _MIN_TICK))
            self._tick.clear()
            with self._mutex:
                if self._stopping or not self.held:
                    return
                try:
                    self.refresh(force=True)
                except LockLost as exc:
                    self.lost = exc
                    return
                except Exception as exc:  # noqa: BLE001 - passing (a reader holds it, a network hiccup): next tick
                    self.refresh_failures += 1
                    self.last_refresh_error = str(exc)

    def stop_refreshing(self) -> None:
        """Stop the timer and wait (bounded) for a refresh in flight."""
        keeper = self._keeper
        if keeper is None:
            return
        self._stopping = True
        self._wake()
        keeper.join(timeout=_STOP_WAIT)

    def release(self) -> bool:
        """Remove the lock if it is still ours. Returns True if removed; never removes another run's lock."""
        self.stop_refreshing()
        with self._mutex:
            if not self.held:
                return False
            self.held = False
            try:
                doc = self._read(self.relpath)[1]
            except TargetNotFound:
                return False
            if not self._is_ours(doc) or self._is_expired(doc, self.relpath):
                return False  # not ours, or expired and possibly being taken over: leave it alone
            try:
                self._while_in_use(lambda: self.target.remove(self.relpath))
            except TargetNotFound:
                return False
            return True

    def __enter__(self) -> "ApplianceLock":
        self.acquire()
        self.start_refreshing()
        return self

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        expires = None
        try:
            expires = format_utc(self._clock() + self.ttl)
            self.release()
        except Exception as error:  # noqa: BLE001 - the work is done (or failed for its own reason)
            # Never mask the error that ended the run, nor fail a run that did its work: the lock
            # expires by itself (and a next run on this host takes it over at once: its process is gone).
            self.release_warning = ("the lock %s could not be removed (%s); it expires by itself by %s"
                                    % (self.target.describe_path(self.relpath), error, expires))
        return False


# The name used in the design brief.
AppliancesLock = ApplianceLock
