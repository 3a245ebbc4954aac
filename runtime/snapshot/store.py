"""The node-local snapshot store.

    STORE/                       0700, root only: a snapshot holds a process's memory, secrets included
      snapshots/NS/NAME/FP-TIME/ committed entries (FP = fingerprint id); never modified once there
      tmp/ID/                    captures, imports and pulls in progress; an entry appears by one rename
      locks/NS/NAME.lock         shared while a restore reads an entry, exclusive to commit or remove
      locks/NS/NAME.capture      held for the whole of a capture: one capture per (NS, NAME)

A capture killed at any point leaves at most a directory under tmp/, which nothing reads and
`rewarm gc` removes once its owner (files.owned_dir) has provably ended: never while the capture,
import or pull that made it runs, up to the rename that commits it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from runtime.host import files
from runtime.snapshot import verified
from runtime.host.files import fsync_dir, fsync_tree, write_json
from runtime.model import layout
from runtime.model.errors import InvalidInput, SnapshotDamaged, StoreBusy, StoreError
from runtime.model.fingerprint import Fingerprint, differences
from runtime.model.manifest import FileDigest, Manifest
from runtime.model.names import validate_name, validate_namespace

OWNER_FILE = files.OWNER_FILE
VERIFIED_FILE = verified.RECORD   # sealed record of the files that were checksummed already
LAST_USED = ".last-used"      # mtime = last restore, for gc
KEPT_LOGS = 20                # failed dump / restore logs kept per kind in STORE/logs
# this node's notes, never exported (an owner file is one only where a commit ended right after its rename)
BOOKKEEPING = (VERIFIED_FILE, verified.SCHEMA_RECORD, LAST_USED, OWNER_FILE)
NOT_CONTENT = frozenset({layout.MANIFEST, *BOOKKEEPING})


@dataclass(frozen=True)
class Entry:
    path: str
    manifest: Manifest

    @property
    def ident(self) -> str:
        return os.path.basename(self.path)

    @property
    def namespace(self) -> str:
        return self.manifest.namespace

    @property
    def name(self) -> str:
        return self.manifest.name

    def size(self) -> int:
        return self.manifest.size()

    def file(self, rel: str) -> str:
        return os.path.join(self.path, rel)


REMOVE_WAIT_S = 10.0   # `rewarm rm` waits this long for a name in use, then says so


@dataclass(frozen=True)
class Broken:
    """A directory among the committed entries that is not a usable one, and why."""
    path: str
    reason: str

    @property
    def ident(self) -> str:
        return os.path.basename(self.path)


class Store:
    def __init__(self, root: str) -> None:
        self.root = root

    # --- paths and locks -------------------------------------------------------------------
    def ensure(self) -> "Store":
        for sub in ("", "snapshots", "tmp", "locks"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self

    def repair_mode(self) -> str | None:
        """Put the store back to root-only if someone opened it up; say so (None: nothing to do)."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return None
        if st.st_mode & 0o777 == 0o700 and st.st_uid == 0:
            return None
        os.chown(self.root, 0, 0)
        os.chmod(self.root, 0o700)
        return (f"store {self.root} was mode {oct(st.st_mode & 0o777)} owned by uid {st.st_uid}; "
                "repaired to 0700 root (snapshots hold process memory, secrets included)")

    def name_dir(self, namespace: str, name: str) -> str:
        return os.path.join(self.root, "snapshots", validate_namespace(namespace), validate_name(name))

    @contextlib.contextmanager
    def _flock(self, namespace: str, name: str, suffix: str, mode: int, wait: float | None = None) -> Iterator[None]:
        """flock the (namespace, name) lock file of `suffix`: blocking, or with LOCK_NB once; with
        `wait`, tried until that many seconds have passed (then StoreBusy)."""
        directory = os.path.join(self.root, "locks", validate_namespace(namespace))
        path = os.path.join(directory, f"{validate_name(name)}.{suffix}")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            if e.errno != errno.EROFS or mode != fcntl.LOCK_SH:
                raise
            # A store mounted read-only: nothing can write it, so a reader needs a lock only
            # where one exists (a writer elsewhere that sees the same files read-write).
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                yield
                return
        try:
            _flock_within(fd, mode, wait, f"{namespace}/{name}", suffix)
            yield
        finally:
            os.close(fd)

    def reading(self, namespace: str, name: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(namespace, name, "lock", fcntl.LOCK_SH)

    def writing(self, namespace: str, name: str, wait: float | None = None) -> contextlib.AbstractContextManager[None]:
        """The name's write lock; with `wait`, StoreBusy once that many seconds pass (a restore holds
        the read lock through its worker's resume hook: gc and rm must never hang on it)."""
        return self._flock(namespace, name, "lock", fcntl.LOCK_EX if wait is None else fcntl.LOCK_EX | fcntl.LOCK_NB,
                           wait)

    def _lock_of(self, path: str) -> contextlib.AbstractContextManager[None]:
        """The write lock of the entry at path, taken now or never (StoreBusy), or none where its
        names are invalid (no restore or capture can take a lock on them)."""
        ns, name = (os.path.relpath(path, os.path.join(self.root, "snapshots")).split(os.sep) + [""])[:2]
        try:
            validate_namespace(ns)
            validate_name(name)
        except InvalidInput:
            return contextlib.nullcontext()
        return self.writing(ns, name, wait=0)

    def capturing(self, namespace: str, name: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(namespace, name, "capture", fcntl.LOCK_EX | fcntl.LOCK_NB)

    def pulling(self, namespace: str, name: str) -> contextlib.AbstractContextManager[None]:
        """One pull into (namespace, name) at a time; a second one waits, then finds the first one's entry."""
        return self._flock(namespace, name, "pull", fcntl.LOCK_EX)

    # --- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        """A private directory for a capture in progress; removed unless committed."""
        self.ensure()
        path = files.owned_dir(os.path.join(self.root, "tmp", uuid.uuid4().hex))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staging: str, manifest: Manifest) -> Entry:
        """Checksum the staged files, write the manifest, and publish the entry with one rename
        (the staging dir stays this process's until then: gc leaves it alone)."""
        manifest = dataclasses.replace(manifest, files=checksum_tree(staging))
        write_json(os.path.join(staging, layout.MANIFEST), manifest.to_json())
        fsync_tree(staging)
        return self._publish(staging, manifest, checksummed=True)

    def _publish(self, staging: str, manifest: Manifest, checksummed: bool) -> Entry:
        """The one rename that makes a staged entry visible; it replaces an entry of the same
        fingerprint (a recapture, a re-pull), under the name's write lock."""
        ns, name = manifest.namespace, manifest.name
        parent = self.name_dir(ns, name)
        final = os.path.join(parent, f"{manifest.fingerprint_id}-{time.time_ns()}")
        _root_only(staging)
        with self.writing(ns, name):   # gc removes an empty name dir under this lock too
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.rename(staging, final)
            with contextlib.suppress(FileNotFoundError):   # ownership ends with the rename
                os.unlink(os.path.join(final, OWNER_FILE))
            fsync_dir(parent)
            if checksummed:   # the first restore here skips the checksum pass
                with contextlib.suppress(SnapshotDamaged):
                    verified.remember(final, verified.facts(final, manifest.files, manifest.name))
            for old in self.entries(ns, name):
                if old.path != final and old.manifest.fingerprint_id == manifest.fingerprint_id:
                    shutil.rmtree(old.path, ignore_errors=True)
        return Entry(final, manifest)

    def commit_pulled(self, staging: str, manifest: Manifest) -> Entry:
        """Publish an entry that arrived complete (a pull: its files were checked against the
        registry's digests as they came). Files must be those of the manifest, of its sizes. They
        are not marked verified: the first restore checksums them against the manifest (as for an
        import), which also catches data a crash lost before it reached the disk."""
        have = {os.path.relpath(os.path.join(d, f), staging) for d, _, fs in os.walk(staging) for f in fs} - NOT_CONTENT
        if have != set(manifest.files):
            odd = sorted(have ^ set(manifest.files))
            raise SnapshotDamaged(f"pulled snapshot does not hold the files its manifest lists ({odd[0]})")
        for rel, want in manifest.files.items():
            if os.path.getsize(os.path.join(staging, rel)) != want.size:
                raise SnapshotDamaged(f"pulled snapshot: {rel} is not {want.size} bytes")
        write_json(os.path.join(staging, layout.MANIFEST), manifest.to_json())   # validated against the schema
        return self._publish(staging, manifest, checksummed=False)

    # --- reading ---------------------------------------------------------------------------
    def scan(self, namespace: str, name: str) -> tuple[list[Entry], list[Broken]]:
        """Committed entries for (namespace, name), newest first, and the directories there that are
        not usable entries (no valid manifest, or one that claims another namespace or name)."""
        parent = self.name_dir(namespace, name)
        entries: list[Entry] = []
        broken: list[Broken] = []
        for n in sorted(_listdir(parent), key=lambda n: n.rsplit("-", 1)[-1], reverse=True):
            path = os.path.join(parent, n)
            try:
                manifest = load_manifest(path)
            except SnapshotDamaged as e:
                broken.append(Broken(path, str(e)))
                continue
            if (manifest.namespace, manifest.name) != (namespace, name):
                broken.append(Broken(path, f"its manifest says {manifest.namespace}/{manifest.name}, "
                                           f"but it lies under {namespace}/{name}"))
                continue
            entries.append(Entry(path, manifest))
        return entries, broken

    def entries(self, namespace: str, name: str) -> list[Entry]:
        return self.scan(namespace, name)[0]

    def candidates(self, namespaces: Iterable[str], name: str) -> tuple[list[Entry], list[Broken]]:
        """scan() over the namespaces a pod may restore from (its own first, then shared ones), less
        the entries captured in any other namespace: a pulled snapshot keeps the namespace it was
        captured in wherever it travels (those come back as Broken, with the reason)."""
        found: list[Entry] = []
        broken: list[Broken] = []
        readable = tuple(dict.fromkeys(namespaces))
        for ns in readable:
            entries, bad = self.scan(ns, name)
            broken += bad
            for e in entries:
                why = e.manifest.unreadable_from(readable)
                if why:
                    broken.append(Broken(e.path, why))
                else:
                    found.append(e)
        return found, broken

    def wait_for(self, namespace: str, name: str, timeout: float) -> Entry:
        """The newest entry of (namespace, name) once there is one (an on-ready capture elsewhere)."""
        deadline = time.monotonic() + timeout
        while not (found := self.entries(namespace, name)):
            if time.monotonic() > deadline:
                raise StoreError(f"no snapshot {namespace}/{name} after {timeout:.0f}s")
            time.sleep(0.2)
        return found[0]

    def all_entries(self) -> list[Entry]:
        return self.everything()[0]

    def everything(self) -> tuple[list[Entry], list[Broken]]:
        """Every entry of the store, and every directory under snapshots/ that is not one."""
        base = os.path.join(self.root, "snapshots")
        entries: list[Entry] = []
        broken: list[Broken] = []
        for ns in sorted(_listdir(base)):
            for name in sorted(_listdir(os.path.join(base, ns))):
                try:
                    found, bad = self.scan(ns, name)
                except InvalidInput as e:
                    broken.append(Broken(os.path.join(base, ns, name), str(e)))
                    continue
                entries += found
                broken += bad
        return entries, broken

    def keep_log(self, kind: str, container_id: str, path: str) -> str | None:
        """Keep a failed dump's or restore's CRIU log in STORE/logs (the newest KEPT_LOGS of each
        kind), so that the reason given can name it after the work dir is gone."""
        directory = os.path.join(self.root, "logs")
        if not os.path.isfile(path):
            return None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            kept = os.path.join(directory, f"{kind}-{container_id}-{time.strftime('%Y%m%dT%H%M%S')}.log")
            shutil.copyfile(path, kept)
            old = sorted((n for n in os.listdir(directory) if n.startswith(kind + "-")),
                         key=lambda n: os.stat(os.path.join(directory, n)).st_mtime)
            for name in old[:-KEPT_LOGS]:
                os.unlink(os.path.join(directory, name))
        except OSError:
            return None
        return kept

    def remove(self, namespace: str, name: str, wait: float = REMOVE_WAIT_S) -> int:
        with self.writing(namespace, name, wait):
            found = self.entries(namespace, name)
            shutil.rmtree(self.name_dir(namespace, name), ignore_errors=True)
        return len(found)

    def gc(self, max_bytes: int) -> list[str]:
        """Drop abandoned captures and broken entries, then least recently used entries until the
        store fits."""
        removed = files.reclaim_abandoned(os.path.join(self.root, "tmp"))   # never a live capture, import or pull
        entries, broken = self.everything()
        for b in broken:   # one in use (a name's lock held) is left for the next gc
            with contextlib.suppress(StoreBusy), self._lock_of(b.path):
                shutil.rmtree(b.path, ignore_errors=True)
                removed.append(b.path)
        entries.sort(key=_last_used)
        total = sum(e.size() for e in entries)
        for e in entries:
            if total <= max_bytes:
                break
            with contextlib.suppress(StoreBusy), self.writing(e.namespace, e.name, wait=0):   # in use: not the LRU
                shutil.rmtree(e.path, ignore_errors=True)
                total -= e.size()
                removed.append(e.path)
        return removed + self._drop_empty_names()

    def _drop_empty_names(self) -> list[str]:
        """Name dirs left empty (by rm of the last entry, or by the loop above), each under its
        name's write lock, which a publish holds from making the dir to its rename into it."""
        base, dropped = os.path.join(self.root, "snapshots"), []
        for ns in _listdir(base):
            for name in _listdir(os.path.join(base, ns)):
                path = os.path.join(base, ns, name)
                with contextlib.suppress(OSError, StoreBusy), self._lock_of(path):
                    os.rmdir(path)   # only if empty
                    dropped.append(path)
        return dropped


def _flock_within(fd: int, mode: int, wait: float | None, what: str, suffix: str) -> None:
    deadline = time.monotonic() + (wait or 0)
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError as e:
            if suffix == "capture":
                raise StoreError(f"a capture of {what} is already running") from e
            if time.monotonic() >= deadline:
                raise StoreBusy(f"snapshot {what} is in use (a restore, capture or pull holds it)"
                                + (f" after {wait:g}s of waiting" if wait else "")) from e
            time.sleep(0.05)


def _root_only(tree: str) -> None:
    """An entry's files 0600 and its dirs 0700, whatever wrote them: they hold process memory."""
    for d, _, names in os.walk(tree):
        os.chmod(d, 0o700)
        for f in names:
            path = os.path.join(d, f)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def fitting(candidates: Iterable[Entry], here: Fingerprint) -> list[Entry]:
    """The candidates whose fingerprint equals this container's on this node, in their order."""
    return [e for e in candidates if not differences(e.manifest.fingerprint, here)]


def load_manifest(entry_path: str) -> Manifest:
    """The entry's manifest, checked against the schema unless a sealed record says these very
    bytes passed it this boot."""
    try:
        with open(os.path.join(entry_path, layout.MANIFEST), "rb") as f:
            data = f.read()
        if verified.schema_checked(entry_path, data):
            return Manifest.from_json(json.loads(data), schema_checked=True)
        manifest = Manifest.from_json(json.loads(data))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SnapshotDamaged(f"snapshot at {entry_path} has no valid manifest: {e}") from e
    verified.remember_schema_check(entry_path, data)
    return manifest


def verify(entry: Entry, deep: bool = True) -> None:
    """Every listed file there, a plain root-only file of the listed size and (deep) checksum."""
    files = entry.manifest.files
    if layout.INVENTORY not in files:
        raise SnapshotDamaged(f"snapshot {entry.ident} has no CRIU inventory: capture was incomplete")
    check_owner(entry.path, entry.ident)
    current = verified.facts(entry.path, files, entry.ident)
    for rel, want in files.items():
        if current[rel][2] != want.size:
            raise SnapshotDamaged(f"snapshot {entry.ident}: {rel} has {current[rel][2]} bytes, manifest says {want.size}")
    if not deep or verified.matches(entry.path, current):
        return
    todo = list(files)
    from concurrent.futures import ThreadPoolExecutor   # captures only, not on a restore's path
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        sums = dict(zip(todo, pool.map(lambda r: sha256_file(os.path.join(entry.path, r)), todo)))
    bad = [rel for rel in todo if sums[rel] != files[rel].sha256]
    if bad:
        raise SnapshotDamaged(f"snapshot {entry.ident} is corrupt: checksum mismatch in {', '.join(bad)}")
    verified.remember(entry.path, current)


def check_owner(path: str, ident: str) -> None:
    """The entry's directories: real directories, root's, writable by root only."""
    for d in (path, os.path.join(path, layout.CHECKPOINT_DIR)):
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise SnapshotDamaged(f"snapshot {ident}: {os.path.relpath(d, os.path.dirname(path))} must be a "
                                f"directory of root writable by root only (uid {st.st_uid}, mode {oct(st.st_mode & 0o7777)})")


def touch_used(entry: Entry) -> None:
    with contextlib.suppress(OSError):
        with open(os.path.join(entry.path, LAST_USED), "a"):
            pass
        os.utime(os.path.join(entry.path, LAST_USED))


def checksum_tree(root: str) -> dict[str, FileDigest]:
    rels = []
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            rel = os.path.relpath(os.path.join(dirpath, fn), root)
            if rel not in NOT_CONTENT:
                rels.append(rel)
    from concurrent.futures import ThreadPoolExecutor   # captures only, not on a restore's path
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        sums = list(pool.map(lambda r: sha256_file(os.path.join(root, r)), rels))
    return {rel: FileDigest(os.path.getsize(os.path.join(root, rel)), s) for rel, s in zip(rels, sums)}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _last_used(e: Entry) -> float:
    try:
        return os.stat(os.path.join(e.path, LAST_USED)).st_mtime
    except OSError:
        return float(e.ident.rsplit("-", 1)[-1]) / 1e9
