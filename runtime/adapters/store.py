"""The node-local snapshot store.

    STORE/                       0700, root only: a snapshot holds a process's memory, secrets included
      snapshots/NS/NAME/FP-TIME/ committed entries (FP = fingerprint id); never modified once there
      tmp/ID/                    captures, imports and pulls in progress; an entry appears by one rename
      locks/NS/NAME.lock         shared while a restore reads an entry, exclusive to commit or remove
      locks/NS/NAME.capture      held for the whole of a capture: one capture per (NS, NAME)

A capture killed at any point leaves at most a directory under tmp/, which nothing reads and
`rewarm gc` removes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from runtime.adapters.files import fsync_dir, fsync_tree, read_json, write_json
from runtime.model import layout
from runtime.model.errors import InvalidInput, NotRestorable, StoreError
from runtime.model.manifest import FileDigest, Manifest
from runtime.model.names import validate_name, validate_namespace

OWNER_FILE = "owner.pid"
VERIFIED_FILE = ".verified"   # cache: file identities that were checksummed already
LAST_USED = ".last-used"      # mtime = last restore, for gc
NOT_CONTENT = frozenset({layout.MANIFEST, VERIFIED_FILE, LAST_USED, OWNER_FILE})


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


class Store:
    def __init__(self, root: str) -> None:
        self.root = root

    # --- paths and locks -------------------------------------------------------------------
    def ensure(self) -> "Store":
        for sub in ("", "snapshots", "tmp", "locks"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self

    def name_dir(self, namespace: str, name: str) -> str:
        return os.path.join(self.root, "snapshots", validate_namespace(namespace), validate_name(name))

    @contextlib.contextmanager
    def _flock(self, namespace: str, name: str, suffix: str, mode: int) -> Iterator[None]:
        directory = os.path.join(self.root, "locks", validate_namespace(namespace))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(directory, f"{validate_name(name)}.{suffix}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError as e:
                raise StoreError(f"a capture of {namespace}/{name} is already running") from e
            yield
        finally:
            os.close(fd)

    def reading(self, namespace: str, name: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(namespace, name, "lock", fcntl.LOCK_SH)

    def writing(self, namespace: str, name: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(namespace, name, "lock", fcntl.LOCK_EX)

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
        path = os.path.join(self.root, "tmp", uuid.uuid4().hex)
        os.mkdir(path, 0o700)
        with open(os.path.join(path, OWNER_FILE), "w") as f:
            f.write(str(os.getpid()))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staging: str, manifest: Manifest) -> Entry:
        """Checksum the staged files, write the manifest, and publish the entry with one rename."""
        os.unlink(os.path.join(staging, OWNER_FILE))
        manifest = dataclasses.replace(manifest, files=checksum_tree(staging))
        write_json(os.path.join(staging, layout.MANIFEST), manifest.to_json())
        fsync_tree(staging)
        ns, name = manifest.namespace, manifest.name
        parent = self.name_dir(ns, name)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        final = os.path.join(parent, f"{manifest.fingerprint_id}-{time.time_ns()}")
        with self.writing(ns, name):
            os.rename(staging, final)
            fsync_dir(parent)
            _remember_verified(final, manifest.files)  # just checksummed: the first restore here skips it
            for old in self.entries(ns, name):  # a recapture replaces the same-fingerprint entry
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
            raise NotRestorable(f"pulled snapshot does not hold the files its manifest lists ({odd[0]})")
        for rel, want in manifest.files.items():
            if os.path.getsize(os.path.join(staging, rel)) != want.size:
                raise NotRestorable(f"pulled snapshot: {rel} is not {want.size} bytes")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(staging, OWNER_FILE))
        write_json(os.path.join(staging, layout.MANIFEST), manifest.to_json())   # validated against the schema
        ns, name = manifest.namespace, manifest.name
        parent = self.name_dir(ns, name)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        final = os.path.join(parent, f"{manifest.fingerprint_id}-{time.time_ns()}")
        with self.writing(ns, name):
            os.rename(staging, final)
            fsync_dir(parent)
            for old in self.entries(ns, name):
                if old.path != final and old.manifest.fingerprint_id == manifest.fingerprint_id:
                    shutil.rmtree(old.path, ignore_errors=True)
        return Entry(final, manifest)

    # --- reading ---------------------------------------------------------------------------
    def entries(self, namespace: str, name: str) -> list[Entry]:
        """Committed entries for (namespace, name), newest first; unreadable ones are skipped."""
        parent = self.name_dir(namespace, name)
        try:
            names = sorted(os.listdir(parent), key=lambda n: n.rsplit("-", 1)[-1], reverse=True)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                out.append(Entry(os.path.join(parent, n), load_manifest(os.path.join(parent, n))))
            except NotRestorable:
                continue
        return out

    def wait_for(self, namespace: str, name: str, timeout: float) -> Entry:
        """The newest entry of (namespace, name) once there is one (an on-ready capture elsewhere)."""
        deadline = time.monotonic() + timeout
        while not (found := self.entries(namespace, name)):
            if time.monotonic() > deadline:
                raise StoreError(f"no snapshot {namespace}/{name} after {timeout:.0f}s")
            time.sleep(0.2)
        return found[0]

    def all_entries(self) -> list[Entry]:
        base = os.path.join(self.root, "snapshots")
        out: list[Entry] = []
        for ns in sorted(_listdir(base)):
            for name in sorted(_listdir(os.path.join(base, ns))):
                with contextlib.suppress(InvalidInput):
                    out.extend(self.entries(ns, name))
        return out

    def remove(self, namespace: str, name: str) -> int:
        with self.writing(namespace, name):
            found = self.entries(namespace, name)
            shutil.rmtree(self.name_dir(namespace, name), ignore_errors=True)
        return len(found)

    def gc(self, max_bytes: int) -> list[str]:
        """Drop abandoned captures, then least recently used entries until the store fits."""
        removed = []
        for d in _listdir(os.path.join(self.root, "tmp")):
            path = os.path.join(self.root, "tmp", d)
            if not _owner_alive(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        entries = sorted(self.all_entries(), key=_last_used)
        total = sum(e.size() for e in entries)
        for e in entries:
            if total <= max_bytes:
                break
            with self.writing(e.namespace, e.name):
                shutil.rmtree(e.path, ignore_errors=True)
            total -= e.size()
            removed.append(e.path)
        return removed


def load_manifest(entry_path: str) -> Manifest:
    try:
        return Manifest.from_json(read_json(os.path.join(entry_path, layout.MANIFEST)))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise NotRestorable(f"snapshot at {entry_path} has no valid manifest: {e}") from e


def verify(entry: Entry, deep: bool = True) -> None:
    """Every file listed, of the listed size and (deep) checksum; nothing half-written."""
    files = entry.manifest.files
    if layout.INVENTORY not in files:
        raise NotRestorable(f"snapshot {entry.ident} has no CRIU inventory: capture was incomplete")
    try:
        identities = _identities(entry.path, files)
    except FileNotFoundError as e:
        raise NotRestorable(f"snapshot {entry.ident} is missing "
                            f"{os.path.relpath(str(e.filename), entry.path)}") from e
    for rel, want in files.items():
        if identities[rel][1] != want.size:
            raise NotRestorable(f"snapshot {entry.ident}: {rel} has {identities[rel][1]} bytes, "
                                f"manifest says {want.size}")
    if not deep:
        return
    with contextlib.suppress(OSError, ValueError):
        if read_json(os.path.join(entry.path, VERIFIED_FILE)) == identities:
            return  # nothing was written to any file since it was last checksummed (ctime)
    todo = list(files)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        sums = dict(zip(todo, pool.map(lambda r: sha256_file(os.path.join(entry.path, r)), todo)))
    bad = [rel for rel in todo if sums[rel] != files[rel].sha256]
    if bad:
        raise NotRestorable(f"snapshot {entry.ident} is corrupt: checksum mismatch in {', '.join(bad)}")
    _remember_verified(entry.path, files)


def _identities(entry_path: str, files: Mapping[str, Any]) -> dict[str, list[int]]:
    out = {}
    for rel in files:
        st = os.stat(os.path.join(entry_path, rel))
        out[rel] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return out


def _remember_verified(entry_path: str, files: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):
        write_json(os.path.join(entry_path, VERIFIED_FILE), _identities(entry_path, files))


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


def _owner_alive(path: str) -> bool:
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            os.kill(int(f.read().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def _last_used(e: Entry) -> float:
    try:
        return os.stat(os.path.join(e.path, LAST_USED)).st_mtime
    except OSError:
        return float(e.ident.rsplit("-", 1)[-1]) / 1e9
