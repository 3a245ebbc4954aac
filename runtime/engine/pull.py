"""Snapshots from registries into the store: `rewarm pull`, and pull on miss for a create whose
`rewarm.dev/snapshot-ref` names one.

A pull resolves the reference to a manifest digest, then, holding the pull lock of its destination
(namespace, name), checks the size its manifest declares against pull_max_bytes and the store's free space, fetches
into STORE/tmp/pull-NS-NAME-DIGEST (kept when the transfer is killed, breaks off or stalls, so the
next pull of the same manifest resumes from it; removed when the pull is refused; `rewarm gc`
removes a kept one once its owner is gone), checks every blob against its digest, re-validates rewarm's manifest.json with the destination's
namespace and name written into it, and publishes the entry with the store's one rename. The
fingerprint is the capturing node's: restore's gate compares it with this node's as for any entry.
A second pull of the same manifest into the same name waits for the first, then finds its entry.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import select
from dataclasses import dataclass
from typing import Any, TextIO

from runtime.adapters import logs, settings_file, store
from runtime.adapters.files import owned_dir
from runtime.adapters.registry import cosign, crio, native, ocicrypt, transfer
from runtime.adapters.registry.client import Client
from runtime.adapters.progress import Progress
from runtime.engine import fingerprinting, warm
from runtime.model import annotations as ann
from runtime.model import registry_ref
from runtime.model.errors import InvalidInput, NotRestorable, RegistryError, RewarmError, TransferInterrupted
from runtime.model.events import EventKind
from runtime.model.manifest import Manifest
from runtime.model.names import validate_name, validate_namespace
from runtime.model.oci_spec import Spec
from runtime.model.registry_ref import Reference
from runtime.model.settings import Settings

FORMATS = ("native", "crio")
SOURCE_REF, SOURCE_DIGEST = "pulled_from", "pulled_digest"


def client_for(settings: Settings, ref: Reference, plain_http: bool = False) -> Client:
    return Client(ref, auth=settings.registry_auth_file, ca_file=settings.registry_ca_file,
                  plain_http=plain_http or ref.registry in settings.plain_http_registries,
                  threads=settings.transfer_threads)


@dataclass
class Pulled:
    entry: store.Entry
    digest: str
    progress: Progress | None     # None: the entry was there already


def pull(settings: Settings, ref_text: str, name: str, namespace: str = "default", fmt: str | None = None,
         plain_http: bool = False, stream: TextIO | None = None, quiet: bool = False,
         container: str | None = None) -> Pulled:
    """Pull REF into (namespace, name); fmt None takes the format the manifest has."""
    ref = registry_ref.parse(ref_text)
    validate_name(name)
    validate_namespace(namespace)
    try:
        result = _pull(settings, ref, name, namespace, fmt, plain_http, stream, quiet)
    except RewarmError as e:
        logs.event(settings.event_log, EventKind.PULL_FAILED, namespace=namespace, snapshot=name, ref=str(ref),
                   reason=str(e), **({"container": container} if container else {}))
        raise
    if result.progress is not None:
        result.progress.finish()   # the clock stops once the entry is published
        logs.event(settings.event_log, EventKind.PULLED, namespace=namespace, snapshot=name, ref=str(ref),
                   digest=result.digest, entry=result.entry.ident, bytes=result.progress.moved,
                   seconds=round(result.progress.seconds(), 3), **({"container": container} if container else {}))
        warm.after(settings, "pull", result.entry)
    return result


def _pull(settings: Settings, ref: Reference, name: str, namespace: str, fmt: str | None, plain_http: bool,
          stream: TextIO | None, quiet: bool) -> Pulled:
    client = client_for(settings, ref, plain_http)
    digest, oci = client.get_manifest()
    found = "native" if native.is_native(oci) else "crio" if crio.is_checkpoint_image(oci) else None
    if found is None:
        raise RegistryError(f"{ref} is neither a rewarm snapshot nor a CRI-O / Podman checkpoint image")
    if fmt and fmt != found:
        raise RegistryError(f"{ref} is a {found} snapshot, not {fmt}")
    if settings.require_signature:   # before any byte of it enters the store
        cosign.verify(client, digest, cosign.load_public(settings.signature_keys))
    st = store.Store(settings.store).ensure()
    with st.pulling(namespace, name):
        there = [e for e in st.entries(namespace, name) if e.manifest.source.get(SOURCE_DIGEST) == digest]
        if there:
            return Pulled(there[0], digest, None)
        staging = os.path.join(st.root, "tmp", f"pull-{namespace}-{name}-{digest[7:23]}")
        resume = os.path.isdir(staging)
        owned_dir(staging, exist_ok=True)
        origin = {SOURCE_REF: str(ref), SOURCE_DIGEST: digest}
        try:
            if found == "native":
                entry, progress = _native(settings, client, st, oci, staging, resume, name, namespace, origin,
                                          stream, quiet)
            else:
                entry, progress = _checkpoint_image(settings, client, oci, staging, resume, name, namespace,
                                                    origin, stream, quiet)
        except TransferInterrupted:
            raise   # its part is kept to resume from
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)   # refused or unusable: nothing to resume
            raise
    return Pulled(entry, digest, progress)


def _native(settings: Settings, client: Client, st: store.Store, oci: dict[str, Any], staging: str, resume: bool,
            name: str, namespace: str, origin: dict[str, str], stream: TextIO | None,
            quiet: bool) -> tuple[store.Entry, Progress]:
    config, pieces = native.pieces_of(oci, _decryption_keys(settings, oci))
    raw = transfer.fetch_bytes(client, config["digest"], config["size"])
    try:
        pushed = Manifest.from_json(json.loads(raw))
    except (InvalidInput, ValueError, TypeError, KeyError) as e:
        raise RegistryError(f"{client.ref}: its manifest.json is not valid: {e}") from e
    reserved = sorted(set(pushed.files) & store.NOT_CONTENT)
    if reserved:
        raise RegistryError(f"{client.ref}: manifest.json lists rewarm's own file {reserved[0]}")
    native.check_against(pieces, pushed.files)
    _check_room(settings, client.ref, staging, sum(p.size for p in pieces))
    progress = Progress("pull", sum(p.size for p in pieces), stream, quiet)
    try:
        transfer.download(client, staging, pieces, settings.transfer_threads, progress, resume, settings.pull_stall_s)
    except BaseException:
        progress.finish()
        raise
    manifest = dataclasses.replace(pushed, namespace=namespace, name=name, source={**pushed.source, **origin})
    try:
        return st.commit_pulled(staging, manifest), progress
    except (NotRestorable, InvalidInput) as e:
        raise RegistryError(f"{client.ref}: {e}") from e


def _checkpoint_image(settings: Settings, client: Client, oci: dict[str, Any], staging: str, resume: bool,
                      name: str, namespace: str, origin: dict[str, str], stream: TextIO | None,
                      quiet: bool) -> tuple[store.Entry, Progress]:
    """A CRI-O / Podman checkpoint image: its one layer is a checkpoint archive, taken in as `rewarm
    import` takes one (checked member by member, fingerprinted for this node)."""
    from runtime.engine import archives
    layer = crio.the_layer(oci)
    if layer is None:
        raise RegistryError(f"{client.ref}: a checkpoint image must have one tar layer")
    digest, sealed = (ocicrypt.unseal(layer, _decryption_keys(settings, oci)) if ocicrypt.is_sealed(layer)
                      else (layer["digest"], None))
    piece = native.Piece("layer.tar", 0, layer["size"], digest, sealed=sealed)
    _check_room(settings, client.ref, staging, piece.size)
    progress = Progress("pull", piece.size, stream, quiet)
    try:
        transfer.download(client, staging, [piece], 1, progress, resume, settings.pull_stall_s)
    except BaseException:
        progress.finish()
        raise
    entry = archives.import_archive(settings, os.path.join(staging, piece.path), name, namespace, origin)
    shutil.rmtree(staging, ignore_errors=True)
    return entry, progress


def _decryption_keys(settings: Settings, oci: dict[str, Any]) -> list[ocicrypt.Key]:
    return ocicrypt.load_keys(settings.decryption_keys, "decryption key") if native.is_sealed(oci) else []


PULL_SPARE = 1 << 30   # what a pull leaves free on the store's disk


def _check_room(settings: Settings, ref: Reference, staging: str, declared: int) -> None:
    """Refuse, before a byte is written, a snapshot larger than pull_max_bytes or than the store's
    disk can take (less PULL_SPARE): its manifest's word is all there is until the bytes come, and
    a hostile registry could claim any size. What a resumed pull has already is counted as there."""
    gib = declared / 2**30
    if settings.pull_max_bytes and declared > settings.pull_max_bytes:
        raise RegistryError(f"{ref}: the snapshot is {gib:.2f} GiB, more than pull_max_bytes "
                            f"({settings.pull_max_bytes / 2**30:.2f} GiB)")
    have = sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(staging) for f in fs)
    fs = os.statvfs(staging)
    free = fs.f_bavail * fs.f_frsize
    if declared - have > free - PULL_SPARE:
        raise RegistryError(f"{ref}: the snapshot is {gib:.2f} GiB and the store's disk has "
                            f"{free / 2**30:.2f} GiB free ({PULL_SPARE >> 30} GiB is kept free)")


# --- pull on miss (rewarm-runc's create) -------------------------------------------------------
def fits_locally(settings: Settings, spec: Spec, request: ann.Request, namespace: str) -> bool:
    """Whether the store has an entry this container could restore (the restore's own lookup)."""
    candidates, _ = store.Store(settings.store).candidates([namespace, *settings.shared_namespaces], request.snapshot)
    return bool(candidates) and bool(store.fitting(candidates, fingerprinting.of_container(spec, settings)))


def on_miss(settings: Settings, spec: Spec, request: ann.Request, namespace: str, container_id: str) -> None:
    """With no fitting entry here, pull rewarm.dev/snapshot-ref within pull_timeout_s. A pull that
    takes longer goes on in the background (the next pod restores) and this one cold-starts:
    NotRestorable says why, as it does for a refused or failed pull."""
    assert request.snapshot_ref is not None
    if fits_locally(settings, spec, request, namespace):
        return
    ref = registry_ref.parse(request.snapshot_ref, ann.SNAPSHOT_REF)
    if not registry_ref.allowed(ref, settings.allowed_registries):
        raise NotRestorable(f"{ann.SNAPSHOT_REF} {ref}: this node does not pull from {ref.registry} "
                            f"(allowed_registries: {', '.join(settings.allowed_registries) or 'none'})")
    job = {"ref": str(ref), "name": request.snapshot, "namespace": namespace, "container": container_id}
    out = _detached_pull(job, settings.pull_timeout_s)
    if out is None:
        raise NotRestorable(f"pull of {ref} did not finish within pull_timeout_s ({settings.pull_timeout_s}s); "
                            "it goes on in the background for the next pod")
    if not out.startswith("pulled "):
        raise NotRestorable(f"pull of {ref} failed: {out or 'no answer'}")


def _detached_pull(job: dict[str, str], timeout: float) -> str | None:
    """Run the pull in a forked child of its own session (this process has its modules loaded
    already: no interpreter start), detached from the container's stdio; wait for its one-line
    answer up to `timeout`. None: still running, it goes on alone and reports to the event log."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            code = _background(job, write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        if not ready:
            return None
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
        os.waitpid(pid, 0)
        return data.decode(errors="replace").strip()
    finally:
        os.close(read_end)


def _background(job: dict[str, str], answer_fd: int) -> int:
    """The pull of on_miss: one line on `answer_fd` for a caller that may have stopped listening."""
    settings = settings_file.load()
    try:
        pulled = pull(settings, job["ref"], job["name"], job["namespace"], quiet=True, container=job["container"])
        line, code = f"pulled {pulled.entry.ident}", 0
    except (RewarmError, OSError) as e:
        line, code = str(e), 1
    try:
        os.write(answer_fd, line.encode() + b"\n")
    except OSError:
        pass   # the create went ahead with a cold start: nobody listens any more
    return code
