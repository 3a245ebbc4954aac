"""rewarm push / pull against a real OCI registry (Debian's docker-registry, run through
testcontainers, TLS from a test CA, htpasswd login): round trips, deduplication, a moved tag, and
every fault ending clean (a clear one-line error, a pull-failed event, nothing visible in the store)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import config_named, events
from private_registry import private_registry
from registry_fixtures import TrickleProxy, synthetic_entry
from runtime.host import settings_file
from runtime.snapshot import store
from runtime.registry import native, transfer
from runtime.front.names import CONFIG_ENV
from runtime.lab.private_node import write_config

PAGES = 3 * native.CHUNK_BYTES + 12345      # four pieces


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    yield from private_registry(str(tmp_path_factory.mktemp("registry")), "registry")


@pytest.fixture(scope="module")
def reg_node(node, registry, tmp_path_factory):
    """A node config of its own that trusts the test CA and logs in; $REWARM_CONFIG names it."""
    top = str(tmp_path_factory.mktemp("reg-node"))
    auth = registry.auth_file(os.path.join(top, "auth.json"))
    path = write_config(top, registry_ca_file=registry.ca, registry_auth_file=auth, transfer_threads=4)
    with config_named(path):
        yield settings_file.load(path)


def cli(*args: str, config: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **({CONFIG_ENV: config} if config else {}))
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def tmp_dirs(node) -> list[str]:
    return sorted(os.listdir(os.path.join(node.store, "tmp")))


def ref(registry, repo: str) -> str:
    return f"{registry.address}/{repo}"


def registry_manifest(reg_node, text: str) -> dict:
    """The manifest at `text`; for a tag that holds an index of fingerprints, the newest one's (what
    the operator's pull of that tag takes)."""
    from runtime.registry import index
    from runtime.engine.pull import client_for
    from runtime.model.registry_ref import parse
    client = client_for(reg_node, parse(text))
    _, manifest = client.get_manifest()
    return client.get_manifest(index.offers_of(manifest)[0].digest)[1] if index.is_index(manifest) else manifest


@pytest.fixture(scope="module")
def pushed(reg_node, registry):
    """Snapshot `source` (random pages) pushed as rewarm/source:v1."""
    entry = synthetic_entry(reg_node, "source", os.urandom(PAGES))
    out = cli("push", "source", ref(registry, "rewarm/source:v1"))
    assert out.returncode == 0, out.stderr
    return entry


def test_a_pushed_snapshot_pulls_back_identical_under_the_destination_name(reg_node, registry, pushed):
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "copy", "--namespace", "default")
    assert out.returncode == 0, out.stderr
    assert "MB/s" in out.stdout                                       # throughput printed
    entry = store.Store(reg_node.store).entries("default", "copy")[0]
    assert (entry.namespace, entry.name) == ("default", "copy")       # the destination, not the pusher's
    assert entry.manifest.captured_in == "default"                    # the namespace it was captured in, kept
    assert entry.manifest.files == pushed.manifest.files              # byte for byte (sha256 of every file)
    assert entry.manifest.fingerprint == pushed.manifest.fingerprint  # the restore gate compares it as for any entry
    assert entry.manifest.source["pulled_from"] == ref(registry, "rewarm/source:v1")
    store.verify(entry, deep=True)
    again = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "copy", "--namespace", "default")
    assert again.returncode == 0 and "already" in again.stdout
    assert len(store.Store(reg_node.store).entries("default", "copy")) == 1 and tmp_dirs(reg_node) == []


def test_the_artifact_is_one_blob_per_file_with_page_images_in_pieces(registry, pushed, reg_node):
    manifest = registry_manifest(reg_node, ref(registry, "rewarm/source:v1"))
    assert manifest["artifactType"] == native.ARTIFACT_TYPE and manifest["config"]["mediaType"] == native.CONFIG_TYPE
    pages = [layer for layer in manifest["layers"]
             if layer["annotations"][native.PATH_KEY] == "checkpoint/pages-1.img"]
    assert [layer["size"] for layer in pages] == [native.CHUNK_BYTES] * 3 + [12345]
    assert len(manifest["layers"]) == len(pushed.manifest.files) + 3


def test_a_second_push_sends_only_the_pieces_that_changed_and_a_moved_tag_pulls_the_new_snapshot(
        reg_node, registry, pushed):
    pages = bytearray(open(pushed.file("checkpoint/pages-1.img"), "rb").read())
    pages[native.CHUNK_BYTES + 7] ^= 0xFF                              # one piece differs
    store.Store(reg_node.store).remove("default", "source")
    changed = synthetic_entry(reg_node, "source", bytes(pages))
    first = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "moving")
    assert first.returncode == 0, first.stderr
    out = cli("push", "source", ref(registry, "rewarm/source:v1"))   # the tag moves to the new snapshot
    assert out.returncode == 0, out.stderr
    pushed_event = [e for e in events(reg_node, "pushed") if e["ref"].endswith("source:v1")][-1]
    assert pushed_event["bytes"] <= native.CHUNK_BYTES + 4096      # one piece (and a few small files) went up
    assert pushed_event["skipped_bytes"] >= 3 * native.CHUNK_BYTES - native.CHUNK_BYTES
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "moving")
    assert out.returncode == 0, out.stderr
    entries = store.Store(reg_node.store).entries("default", "moving")
    assert len(entries) == 1                                          # same fingerprint: the new one replaced it
    assert entries[0].manifest.files == changed.manifest.files


def assert_clean_failure(out, node, name: str, reason: str, namespace: str = "default") -> None:
    assert out.returncode == 1, out
    errors = [line for line in out.stderr.splitlines() if line.startswith("rewarm pull: ")]   # besides progress
    assert len(errors) == 1 and reason in errors[0] and out.stderr.strip().endswith(errors[0]), out.stderr
    assert store.Store(node.store).entries(namespace, name) == []
    failed = [e for e in events(node, "pull-failed") if e["snapshot"] == name]
    assert failed and reason in failed[-1]["reason"]


def test_a_wrong_password_is_refused_with_the_reason(reg_node, registry, pushed, tmp_path):
    auth = registry.auth_file(str(tmp_path / "wrong.json"), password="not-the-password")
    config = write_config(str(tmp_path), **{**reg_node.to_json(), "registry_auth_file": auth})
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "denied", config=config)
    assert_clean_failure(out, settings_file.load(config), "denied", "refused the credentials")


def test_an_untrusted_certificate_is_refused(reg_node, registry, pushed, tmp_path):
    config = write_config(str(tmp_path), **{**reg_node.to_json(), "registry_ca_file": ""})
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "untrusted", config=config)
    assert_clean_failure(out, settings_file.load(config), "untrusted", "TLS certificate not trusted")


def test_plain_http_is_refused_for_a_registry_off_loopback(reg_node):
    out = cli("pull", "registry.example.com/rewarm/x:v1", "--name", "plain", "--plain-http")
    assert_clean_failure(out, reg_node, "plain", "only spoken to a loopback registry")


def test_a_registry_that_is_down_fails_fast_and_clean(reg_node, registry, pushed):
    registry.stop()
    try:
        started = time.monotonic()
        out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "down")
        assert time.monotonic() - started < 15
        assert_clean_failure(out, reg_node, "down", "unreachable")
        assert tmp_dirs(reg_node) == []
    finally:
        registry.start()


def test_a_manifest_that_claims_more_than_the_disk_holds_is_refused_before_a_byte_is_written(
        reg_node, registry, pushed, tmp_path):
    """A hostile (or broken) registry's manifest says 500 GiB: the pull is refused on the manifest's
    word, before any file is made, and leaves no staging dir; pull_max_bytes caps smaller ones."""
    from runtime.engine.pull import client_for
    from runtime.model.registry_ref import parse
    client = client_for(reg_node, parse(ref(registry, "rewarm/source:v1")))
    oci = registry_manifest(reg_node, ref(registry, "rewarm/source:v1"))
    config = json.loads(transfer.fetch_bytes(client, oci["config"]["digest"], oci["config"]["size"]))
    huge, page = 500 << 30, "checkpoint/pages-1.img"
    fake = transfer.put_config(client, b"a small blob that claims to be 500 GiB")[7:]   # the registry has it
    config["files"][page] = {"size": huge, "sha256": fake}
    layers = [layer for layer in oci["layers"] if layer["annotations"][native.PATH_KEY] != page]
    layers.append(native.Piece(page, 0, huge, f"sha256:{fake}").descriptor())
    data = json.dumps(config).encode()
    client.put_manifest({**oci, "config": {**oci["config"], "digest": transfer.put_config(client, data),
                                           "size": len(data)}, "layers": layers}, "huge")
    out = cli("pull", ref(registry, "rewarm/source:huge"), "--name", "huge")
    assert_clean_failure(out, reg_node, "huge", "500.00 GiB and the store's disk has")
    assert not [d for d in tmp_dirs(reg_node) if "-huge-" in d]
    capped = write_config(str(tmp_path), **{**reg_node.to_json(), "pull_max_bytes": 1 << 20})
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "capped", config=capped)
    assert_clean_failure(out, settings_file.load(capped), "capped", "more than pull_max_bytes (0.00 GiB)")
    assert not [d for d in tmp_dirs(reg_node) if "-capped-" in d]


def test_a_registry_that_trickles_is_broken_off_and_the_name_is_free_for_the_next_pull(
        reg_node, registry, pushed, tmp_path):
    """One byte every half second keeps every read within its timeout: the pull fails once less
    than 1 MiB came in pull_stall_s, keeps its part, and the next pull of the name resumes from it."""
    proxy = TrickleProxy(registry.port)
    try:
        auth = registry.auth_file(str(tmp_path / "auth.json"), address=proxy.address)
        config = write_config(str(tmp_path), **{**reg_node.to_json(), "registry_auth_file": auth, "pull_stall_s": 2})
        started = time.monotonic()
        out = cli("pull", f"{proxy.address}/rewarm/source:v1", "--name", "trickled", config=config, timeout=120)
        assert time.monotonic() - started < 30
        assert_clean_failure(out, settings_file.load(config), "trickled", "(pull_stall_s): stalled")
        assert [d for d in tmp_dirs(reg_node) if "-trickled-" in d]               # kept to resume
    finally:
        proxy.close()
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "trickled", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "already there" in out.stdout                                        # resumed, not started over
    store.verify(store.Store(reg_node.store).entries("default", "trickled")[0], deep=True)


def test_a_blob_corrupted_inside_the_registry_is_caught(reg_node, registry):
    synthetic_entry(reg_node, "fragile", os.urandom(2 * native.CHUNK_BYTES))
    assert cli("push", "fragile", ref(registry, "rewarm/fragile:v1")).returncode == 0
    manifest = registry_manifest(reg_node, ref(registry, "rewarm/fragile:v1"))
    piece = next(layer for layer in manifest["layers"] if layer["mediaType"] == native.CHUNK_TYPE)
    with open(registry.blob_path(piece["digest"]), "r+b") as f:
        f.seek(1000)
        f.write(b"bit rot")
    out = cli("pull", ref(registry, "rewarm/fragile:v1"), "--name", "fragile-copy")
    assert_clean_failure(out, reg_node, "fragile-copy", "does not match its digest")
    assert all(d.startswith("pull-") for d in tmp_dirs(reg_node))    # only the resumable pull, never an entry


def test_a_pull_killed_halfway_leaves_nothing_visible_and_resumes(reg_node, registry, tmp_path):
    synthetic_entry(reg_node, "big", os.urandom(12 * native.CHUNK_BYTES))
    assert cli("push", "big", ref(registry, "rewarm/big:v1")).returncode == 0
    config = write_config(str(tmp_path), **{**reg_node.to_json(), "transfer_threads": 1})
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "rewarm"), "pull",
                             ref(registry, "rewarm/big:v1"), "--name", "big-copy"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **{CONFIG_ENV: config}))
    assert proc.stderr is not None
    for line in proc.stderr:
        if "pull: 30%" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store.Store(reg_node.store).entries("default", "big-copy") == []
    assert [d for d in tmp_dirs(reg_node) if "big-copy" in d]                   # the resumable part
    out = cli("pull", ref(registry, "rewarm/big:v1"), "--name", "big-copy")
    assert out.returncode == 0, out.stderr
    resumed = [e for e in events(reg_node, "pulled") if e["snapshot"] == "big-copy"][-1]
    assert 0 < resumed["bytes"] < 12 * native.CHUNK_BYTES                    # only what was missing
    assert "already there" in out.stdout
    store.verify(store.Store(reg_node.store).entries("default", "big-copy")[0], deep=True)
    assert not [d for d in tmp_dirs(reg_node) if "big-copy" in d]
    store.Store(reg_node.store).remove("default", "big")


def test_two_concurrent_pulls_of_one_ref_give_one_entry(reg_node, registry, pushed):
    outs: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: outs.append(
        cli("pull", ref(registry, "rewarm/source:v1"), "--name", "twin"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o.returncode for o in outs] == [0, 0], [o.stderr for o in outs]
    assert len(store.Store(reg_node.store).entries("default", "twin")) == 1
    assert sum("already" in o.stdout for o in outs) == 1                     # the second found the first's entry
    assert tmp_dirs(reg_node) == [] or all(not d.startswith("pull-default-twin") for d in tmp_dirs(reg_node))


def test_gc_removes_an_abandoned_pull(reg_node):
    leftovers = [d for d in tmp_dirs(reg_node) if d.startswith("pull-")]
    out = cli("gc", "--max-bytes", str(1 << 40))
    assert out.returncode == 0
    assert not [d for d in tmp_dirs(reg_node) if d in leftovers]


def test_push_refuses_a_corrupt_snapshot_and_leaves_the_tag(reg_node, registry, pushed, tmp_path):
    entry = synthetic_entry(reg_node, "rotten", os.urandom(1000))
    with open(entry.file("checkpoint/pages-1.img"), "r+b") as f:
        f.write(b"x")
    os.utime(entry.file("checkpoint/pages-1.img"))
    os.unlink(entry.file(store.VERIFIED_FILE))
    out = cli("push", "rotten", ref(registry, "rewarm/source:v1"))
    assert out.returncode == 1 and "corrupt" in out.stderr
    pulled = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "still-source")
    assert pulled.returncode == 0
    assert "rotten" not in json.dumps(store.Store(reg_node.store).entries("default", "still-source")[0]
                                      .manifest.source)


# --- sealed snapshots: encryption (ocicrypt's layout) and signatures (cosign's) ---------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA and an EC (P-256) key pair, and a stranger's EC pair, made by openssl as an operator would."""
    top = tmp_path_factory.mktemp("keys")
    made = {}
    for name, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                       ("stranger", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        key, pub = str(top / f"{name}.key"), str(top / f"{name}.pub")
        subprocess.run(["openssl", "genpkey", *args, "-out", key], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
        made[name] = (key, pub)
    return made


def test_an_encrypted_push_keeps_the_memory_from_the_registry_and_pulls_back_with_either_key(
        reg_node, registry, keys):
    """Every blob sealed to two recipients (RSA, EC): the registry holds no byte of the page image in
    the clear; each private key opens it; no key, the wrong key or a tampered blob is refused."""
    pages = os.urandom(2 * native.CHUNK_BYTES + 999)
    synthetic_entry(reg_node, "secret", pages)
    out = cli("push", "secret", ref(registry, "rewarm/secret:v1"), "--encrypt-to", keys["rsa"][1],
              "--encrypt-to", keys["ec"][1])
    assert out.returncode == 0, out.stderr
    layers = registry_manifest(reg_node, ref(registry, "rewarm/secret:v1"))["layers"]
    assert layers and all(x["mediaType"].endswith("+encrypted") for x in layers)
    assert all("org.opencontainers.image.enc.keys.jwe" in x["annotations"] for x in layers)
    for layer in layers:
        with open(registry.blob_path(layer["digest"]), "rb") as f:
            stored = f.read()
        assert pages[:4096] not in stored and pages[-4096:] not in stored
    for which in ("rsa", "ec"):
        name = f"opened-{which}"
        out = cli("pull", ref(registry, "rewarm/secret:v1"), "--name", name, "--decryption-key", keys[which][0])
        assert out.returncode == 0, out.stderr
        entry = store.Store(reg_node.store).entries("default", name)[0]
        store.verify(entry, deep=True)
        with open(entry.file("checkpoint/pages-1.img"), "rb") as f:
            assert f.read() == pages
    out = cli("pull", ref(registry, "rewarm/secret:v1"), "--name", "no-key")
    assert_clean_failure(out, reg_node, "no-key", "the snapshot is encrypted and no decryption key was given")
    out = cli("pull", ref(registry, "rewarm/secret:v1"), "--name", "wrong-key", "--decryption-key", keys["stranger"][0])
    assert_clean_failure(out, reg_node, "wrong-key", "none of the decryption keys opens it")
    chunk = next(x for x in layers if x["mediaType"] == native.CHUNK_TYPE + "+encrypted")
    with open(registry.blob_path(chunk["digest"]), "r+b") as f:
        f.seek(4096)
        f.write(b"tampered")
    out = cli("pull", ref(registry, "rewarm/secret:v1"), "--name", "tampered", "--decryption-key", keys["ec"][0])
    assert_clean_failure(out, reg_node, "tampered", "does not match its digest")
    assert not [d for d in tmp_dirs(reg_node) if "-no-key-" in d or "-wrong-key-" in d]


def test_skopeo_decrypts_an_encrypted_checkpoint_image_with_the_same_key(reg_node, registry, keys, tmp_path):
    """The layout is ocicrypt's: skopeo (containers/image + ocicrypt) decrypts rewarm's push, and the
    layer it writes is the checkpoint archive, page image byte for byte."""
    import tarfile
    pages = os.urandom(300_000)
    synthetic_entry(reg_node, "for-skopeo", pages)
    out = cli("push", "for-skopeo", ref(registry, "rewarm/for-skopeo:v1"), "--format", "crio",
              "--encrypt-to", keys["rsa"][1])
    assert out.returncode == 0, out.stderr
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(open(registry.ca, "rb").read())
    copied = tmp_path / "copied"
    run = subprocess.run(["skopeo", "copy", "--src-cert-dir", str(certs), "--src-creds", registry.credentials,
                          "--decryption-key", keys["rsa"][0], f"docker://{ref(registry, 'rewarm/for-skopeo:v1')}",
                          f"dir:{copied}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((copied / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"          # decrypted
    with tarfile.open(copied / layer["digest"].split(":")[1]) as tar:
        member = tar.extractfile("checkpoint/pages-1.img")
        assert member is not None and member.read() == pages
    denied = subprocess.run(["skopeo", "copy", "--src-cert-dir", str(certs), "--src-creds", registry.credentials,
                             "--decryption-key", keys["stranger"][0], f"docker://{ref(registry, 'rewarm/for-skopeo:v1')}",
                             f"dir:{tmp_path / 'denied'}"], capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0                                                    # and only with the key


def test_a_pull_that_requires_a_signature_refuses_unsigned_and_strangers_before_a_byte_is_stored(
        reg_node, registry, pushed, keys, tmp_path):
    out = cli("push", "source", ref(registry, "rewarm/signed:v1"), "--sign-key", keys["ec"][0])
    assert out.returncode == 0, out.stderr
    digest = out.stdout.split("@")[1].split(":", 2)
    digest = f"{digest[0]}:{digest[1]}"
    sig = registry_manifest(reg_node, ref(registry, f"rewarm/signed:{digest.replace(':', '-')}.sig"))
    (layer,) = sig["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert "dev.cosignproject.cosign/signature" in layer["annotations"]
    out = cli("pull", ref(registry, "rewarm/signed:v1"), "--name", "signed", "--verify-key", keys["ec"][1])
    assert out.returncode == 0, out.stderr
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "unsigned", "--verify-key", keys["ec"][1])
    assert_clean_failure(out, reg_node, "unsigned", "is not signed")
    out = cli("pull", ref(registry, "rewarm/signed:v1"), "--name", "stranger", "--verify-key", keys["stranger"][1])
    assert_clean_failure(out, reg_node, "stranger", "no signature there verifies with signature_keys")
    assert not [d for d in tmp_dirs(reg_node) if "-unsigned-" in d or "-stranger-" in d]
    required = write_config(str(tmp_path), **{**reg_node.to_json(), "require_signature": True,
                                              "signature_keys": [keys["rsa"][1], keys["ec"][1]]})
    out = cli("pull", ref(registry, "rewarm/source:v1"), "--name", "unsigned-by-config", config=required)
    assert_clean_failure(out, settings_file.load(required), "unsigned-by-config", "is not signed")
    assert cli("pull", ref(registry, "rewarm/signed:v1"), "--name", "signed-by-config",
               config=required).returncode == 0
