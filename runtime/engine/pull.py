"""Snapshots from registries into the store: `rewarm pull`, and pull on miss for a create whose
`rewarm.dev/snapshot-ref` names one.

A pull resolves the reference to a manifest digest (formats/per_fingerprint.py: for a pull on miss
the snapshot of the container's fingerprint, TAG-fp-IDENT; for the operator's pull what TAG names,
the newest snapshot of an index), then, holding the pull lock of its destination
(namespace, name), checks the size its manifest declares against pull_max_bytes and the store's free space, fetches
into STORE/tmp/pull-NS-NAME-DIGEST (kept when the transfer is killed, breaks off or stalls, so the
next pull of the same manifest resumes from it; removed when the pull is refused; `rewarm gc`
removes a kept one once its owner is gone), checks every blob against its digest, re-validates rewarm's manifest.json with the destination's
namespace and name written into it, and publishes the entry with the store's one rename. The
fingerprint is the capturing node's: restore's gate compares it with this node's as for any entry.
A second pull of the same manifest into the same name waits for the first, then finds its entry.
"""
from __future__ import annotations

import os
import shutil
import select
import threading
import time
from dataclasses import dataclass

from runtime.host import settings_file
from runtime.observe import logs
from runtime.snapshot import store
from runtime.host.files import owned_dir
from runtime.observe.progress import Progress
from runtime.registry import cosign
from runtime.registry.client import Bounds, Client
from runtime.engine import warm
from runtime.engine.formats import Caller, Staging, Transfer, detect, per_fingerprint
from runtime.engine.wanted import Wanted
from runtime.model import annotations as ann
from runtime.model import registry_ref
from runtime.model.errors import NotRestorable, PullRefused, RegistryError, RewarmError, TransferInterrupted, code_of
from runtime.model.events import EventKind, ReasonCode, reason_code
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import PULLED_FROM
from runtime.model.names import validate_name, validate_namespace
from runtime.model.registry_ref import Reference
from runtime.model.settings import Settings

SOURCE_REF, SOURCE_DIGEST = PULLED_FROM, "pulled_digest"


def client_for(settings: Settings, ref: Reference) -> Client:
    return Client(ref, auth=settings.registry_auth_file, ca_file=settings.registry_ca_file,
                  plain_http=ref.registry in settings.plain_http_registries, threads=settings.transfer_threads,
                  bounds=Bounds.of(settings))


@dataclass
class Pulled:
    entry: store.Entry
    digest: str
    progress: Progress | None     # None: the entry was there already


def pull(settings: Settings, ref_text: str, name: str, namespace: str = "default", fmt: str | None = None,
         caller: Caller = Caller()) -> Pulled:
    """Pull REF into (namespace, name); fmt None takes the format the manifest has."""
    ref = registry_ref.parse(ref_text)
    validate_name(name)
    validate_namespace(namespace)
    tagged = {"container": caller.container} if caller.container else {}
    started = time.monotonic()
    try:
        result = _pull(Transfer(settings, client_for(settings, ref), caller), name, namespace, fmt)
    except (RewarmError, OSError) as e:
        logs.event(settings.event_log, EventKind.PULL_FAILED, namespace=namespace, snapshot=name, ref=str(ref),
                   reason=str(e), code=code_of(e).value, seconds=round(time.monotonic() - started, 3), **tagged)
        raise
    if result.progress is not None:
        result.progress.finish()   # the clock stops once the entry is published
        logs.event(settings.event_log, EventKind.PULLED, namespace=namespace, snapshot=name, ref=str(ref),
                   digest=result.digest, entry=result.entry.ident, bytes=result.progress.moved,
                   seconds=round(result.progress.seconds(), 3), **tagged)
        warm.after(settings, "pull", result.entry)
    return result


def _pull(t: Transfer, name: str, namespace: str, fmt: str | None) -> Pulled:
    ref = t.client.ref
    chosen = per_fingerprint.choose(t)   # of an index, the one snapshot this pull may take
    digest, oci = chosen.digest, chosen.body
    found = detect(oci, str(ref))
    if fmt and fmt != found.name:
        raise PullRefused(f"{ref} is a {found.name} snapshot, not {fmt}")
    if t.settings.require_signature:   # before any byte of it enters the store
        try:
            cosign.verify(t.client, digest, cosign.load_public(t.settings.signature_keys))
        except RegistryError as e:   # unsigned, or signed by a stranger: the node's policy says no
            raise PullRefused(str(e)) from e
    st = store.Store(t.settings.store).ensure()
    with st.pulling(namespace, name):
        there = [e for e in st.entries(namespace, name) if e.manifest.source.get(SOURCE_DIGEST) == digest]
        if there:
            return Pulled(there[0], digest, None)
        path = os.path.join(st.root, "tmp", f"pull-{namespace}-{name}-{digest[7:23]}")
        resume = os.path.isdir(path)
        owned_dir(path, exist_ok=True)
        staging = Staging(st, path, resume, name, namespace, {SOURCE_REF: str(ref), SOURCE_DIGEST: digest})
        try:
            entry, progress = found.pull(t, oci, staging)
        except TransferInterrupted:
            raise   # its part is kept to resume from
        except Exception:
            shutil.rmtree(path, ignore_errors=True)   # refused or unusable: nothing to resume
            raise
    return Pulled(entry, digest, progress)


# --- pull on miss (rewarm-runc's create) -------------------------------------------------------
def fits_locally(settings: Settings, want: Wanted) -> bool:
    """Whether the store has an entry this container could restore (the restore's own lookup)."""
    candidates, _ = store.Store(settings.store).candidates([want.namespace, *settings.shared_namespaces],
                                                           want.request.snapshot)
    return bool(candidates) and bool(store.fitting(candidates, want.fingerprint))


@dataclass(frozen=True)
class Pod:
    """The container a pull on miss is for, as its runtime knows it: the pull goes on in the
    background only while that container exists."""
    container_id: str
    runtime_root: str

    def state_dir(self) -> str:
        return os.path.join(self.runtime_root, self.container_id)


@dataclass(frozen=True)
class _Job:
    """A pull on miss, as its background child runs it."""
    ref: str
    name: str
    namespace: str
    container: str
    state_dir: str
    fits: Fingerprint     # the container's fingerprint here: the snapshot of REF the pull takes


def on_miss(settings: Settings, want: Wanted, pod: Pod, deadline: float) -> None:
    """With no fitting entry here, pull the snapshot of rewarm.dev/snapshot-ref that fits this
    container on this node (the fingerprint restore's gate computes) within pull_timeout_s. A pull
    that takes longer goes on in the background (the next pod restores) while this pod lives, and
    this one cold-starts: NotRestorable says why, as it does for a refused or failed pull, or for a
    ref that offers no snapshot of this fingerprint (each fingerprint on offer and how it differs).
    The wait ends at pull_timeout_s or at the create's `deadline`, whichever comes first."""
    request, namespace, here = want.request, want.namespace, want.fingerprint
    assert request.snapshot_ref is not None
    if fits_locally(settings, want):
        return
    ref = registry_ref.parse(request.snapshot_ref, ann.SNAPSHOT_REF)
    refused = registry_ref.refused_for(ref, namespace, settings.allowed_registries, settings.namespace_registries)
    if refused:
        raise NotRestorable(f"{ann.SNAPSHOT_REF} {ref}: {refused}", ReasonCode.PULL_REFUSED)
    job = _Job(str(ref), request.snapshot, namespace, pod.container_id, pod.state_dir(), here)
    wait = max(0.0, min(settings.pull_timeout_s, deadline - time.monotonic()))
    out = _detached_pull(job, wait)
    if out is None:
        raise NotRestorable(f"pull of {ref} did not finish within {wait:.0f}s (pull_timeout_s {settings.pull_timeout_s}s, "
                            f"create_timeout_s {settings.create_timeout_s}s); it goes on in the background for the "
                            "next pod while this one lives", ReasonCode.PULL_TIMEOUT)
    if not out.startswith(PULLED):
        code, why = _failure_of(out)
        if code in (ReasonCode.PULL_REFUSED, ReasonCode.NOT_FITTING, ReasonCode.NO_SNAPSHOT):   # the situation's call, not a breakage
            raise NotRestorable(f"pull of {ref} refused: {why}", code)
        raise NotRestorable(f"pull of {ref} failed: {why or 'no answer'}", ReasonCode.PULL_FAILED)


# The background pull's one-line answer: "pulled ENTRY", or "failed CODE REASON" (its pull-failed
# event's code, so that the cold start it causes is counted as a refusal or a failure without
# reading the reason's text).
PULLED, FAILED = "pulled ", "failed "


def _failure_of(answer: str) -> tuple[ReasonCode, str]:
    if not answer.startswith(FAILED):
        return ReasonCode.UNKNOWN, answer   # the pull died before it could say
    code, _, why = answer[len(FAILED):].partition(" ")
    return reason_code(code), why


def _detached_pull(job: _Job, timeout: float) -> str | None:
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


def _background(job: _Job, answer_fd: int) -> int:
    """The pull of on_miss: one line on `answer_fd` for a caller that may have stopped listening."""
    settings = settings_file.load()
    threading.Thread(target=_end_with_pod, args=(settings, job), daemon=True, name="rewarm-pod-watch").start()
    try:
        pulled = pull(settings, job.ref, job.name, job.namespace,
                      caller=Caller(quiet=True, container=job.container, fits=job.fits))
        line, code = f"{PULLED}{pulled.entry.ident}", 0
    except (RewarmError, OSError) as e:
        line, code = f"{FAILED}{code_of(e).value} {e}", 1
    try:
        os.write(answer_fd, line.encode() + b"\n")
    except OSError:
        pass   # the create went ahead with a cold start: nobody listens any more
    return code


POD_APPEARS_S = 60.0   # a create goes on to its cold start at once: a pod not there by then never came


def _end_with_pod(settings: Settings, job: _Job) -> None:
    """End this background pull once its pod's container is gone (deleted, or never created): a
    pull nobody waits for must not outlive the pod that asked. What it fetched stays for the next
    pull to resume from, as after any kill."""
    state_dir, since = job.state_dir, time.monotonic()
    seen = False
    while True:
        there = os.path.isdir(state_dir)
        seen = seen or there
        if (seen and not there) or (not seen and time.monotonic() - since > POD_APPEARS_S):
            logs.event(settings.event_log, EventKind.PULL_FAILED, namespace=job.namespace, snapshot=job.name,
                       ref=job.ref, container=job.container, code=ReasonCode.POD_GONE.value,
                       reason="its pod's container is gone: the pull ends with it")
            os._exit(1)
        time.sleep(0.5)
