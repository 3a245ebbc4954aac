"""rewarm with Podman (Debian's podman, runc backend): rewarm's hooks run through hooks.d for annotated
containers only, and a real `podman container checkpoint --export` archive is imported into the
store and restored through rewarm-runc with its warm state. Also: hostile or broken archives."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from helpers import events, rewarm_cli
from runtime.netns import netns_http
from runtime.snapshot import store
from runtime.host.files import read_json, write_json
from runtime.model import layout
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc
from runtime.lab.oci_image import ImageSpec, python_paths, write_archive

IMAGE = "localhost/rewarm/warm-worker:podman-test"
# This machine refuses to raise resource limits (no CAP_SYS_RESOURCE); Podman sets them unless told lower.
PODMAN_RUN = ["run", "-d", "--network", "none", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
              "-e", "WARM_SECONDS=2"]


@pytest.fixture(scope="module")
def podman(node, tmp_path_factory):
    """`podman` with the runc backend and a hooks dir written by `rewarm install --runtime podman`."""
    work = tmp_path_factory.mktemp("podman")
    hooks = work / "hooks.d"
    out = rewarm_cli("install", "--runtime", "podman", "--hooks-dir", str(hooks), "--binary", rewarm_runc(),
                   "--rewarm-config", os.environ["REWARM_CONFIG"])
    assert out.returncode == 0, out.stderr
    write_archive(ImageSpec(name=IMAGE, entrypoint=["/usr/bin/python3", "/app/worker.py"], workdir="/app",
                            paths=python_paths(), trees={"/app": WORKER_DIR},
                            files={"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "/etc/group": b"root:x:0:\n"}),
                  str(work / "image.tar"))
    base = ["podman", "--runtime", "runc", "--hooks-dir", str(hooks)]
    subprocess.run([*base, "load", "-i", str(work / "image.tar")], check=True, capture_output=True)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, check=check, timeout=300)
    yield run
    ours = run("ps", "-aq", "--filter", f"ancestor={IMAGE}", check=False).stdout.split()
    if ours:   # only this module's containers: other tests run Podman containers of their own
        run("rm", "-f", *ours, check=False)
    run("image", "umount", "-a", check=False)
    run("rmi", "-f", IMAGE, check=False)


def answer_of(podman, name: str, timeout: float = 30) -> dict:
    pid = podman("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = netns_http.request(f"/proc/{pid}/ns/net", "http://127.0.0.1:8080/", timeout=2)
        if status == 200:
            return json.loads(body)
        time.sleep(0.1)
    raise TimeoutError(podman("logs", name, check=False).stdout)


def test_hooks_run_for_annotated_podman_containers_only(podman, node):
    annotated = podman(*PODMAN_RUN, "--name", "hooked", "--annotation", "rewarm.dev/snapshot=podman-hooks", IMAGE).stdout.strip()
    plain = podman(*PODMAN_RUN, "--name", "plain", IMAGE).stdout.strip()
    answer_of(podman, "hooked"), answer_of(podman, "plain")
    podman("rm", "-f", "hooked", "plain")
    stopped = {e["container"]: e for e in events(node, "stopped")}
    assert stopped[annotated]["snapshot"] == "podman-hooks"      # poststop ran
    assert plain not in stopped and not [e for e in events(node) if e.get("container") == plain]
    bad = podman(*PODMAN_RUN, "--name", "bad", "--annotation", "rewarm.dev/snapshot=x",
                 "--annotation", "rewarm.dev/fallback=maybe", IMAGE, check=False)
    assert bad.returncode != 0 and "invalid rewarm.dev/fallback: 'maybe'" in bad.stderr   # prestart ran and refused
    podman("rm", "-f", "bad", check=False)


def bundle_like_podmans(entry: store.Entry, lower: str, path: str, name: str) -> str:
    """A runc bundle for the imported checkpoint, as a node restoring it provides one: the image's
    rootfs (read-only, with an overlay for the container's writes) and the mounts of the
    checkpoint's spec, their sources copied; the snapshot annotation names the imported entry."""
    spec = read_json(os.path.join(entry.path, layout.SPEC_DUMP))
    for d in ("rootfs", "upper", "work", "binds"):
        os.makedirs(os.path.join(path, d))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={path}/upper,workdir={path}/work", f"{path}/rootfs"], check=True)
    os.chmod(f"{path}/rootfs", os.stat(lower).st_mode & 0o7777)   # CRIU checks the root's mode
    for mount in spec["mounts"]:
        if mount["type"] == "bind":
            copy = os.path.join(path, "binds", mount["destination"].strip("/").replace("/", "_"))
            if os.path.isfile(mount["source"]):
                shutil.copy(mount["source"], copy)
            else:
                os.makedirs(copy)
            mount["source"] = copy
    spec["root"] = {"path": "rootfs"}
    spec.pop("hooks", None)
    spec["linux"]["cgroupsPath"] = f"/rewarm-test/{name}"
    spec["annotations"]["rewarm.dev/snapshot"] = entry.name
    write_json(os.path.join(path, "config.json"), spec, mode=0o644)
    return path


def test_a_podman_export_is_imported_and_restored_through_rewarm_runc_with_its_warm_state(podman, node, tmp_path):
    podman(*PODMAN_RUN, "--name", "source", IMAGE)
    warm = answer_of(podman, "source")
    exported = tmp_path / "source.tar.zst"
    podman("container", "checkpoint", "--export", str(exported), "source")   # Podman's default: zstd
    out = rewarm_cli("import", str(exported), "--name", "from-podman")
    assert out.returncode == 0, out.stderr
    entry = store.Store(node.store).entries("default", "from-podman")[0]
    assert entry.manifest.source["imported_from"] == exported.name
    lower = podman("image", "mount", IMAGE).stdout.strip()
    bundle = bundle_like_podmans(entry, lower, str(tmp_path / "bundle"), "imported")
    root, log = str(tmp_path / "runc-root"), str(tmp_path / "runtime.log")
    output, stdio = os.pipe()   # the container's stdio is a pipe, as a shim gives it (the worker keeps it)
    try:
        created = subprocess.run([rewarm_runc(), "--root", root, "--log", log, "--log-format", "json", "create",
                                  "--bundle", bundle, "--pid-file", f"{bundle}/pid", "imported"],
                                 stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, timeout=120)
        os.close(stdio)
        assert created.returncode == 0, open(log).read()
        subprocess.run([rewarm_runc(), "--root", root, "start", "imported"], check=True)
        assert "restored imported from snapshot default/from-podman" in open(log).read()
        status, body = netns_http.request(f"/proc/{open(f'{bundle}/pid').read().strip()}/ns/net",
                                          "http://127.0.0.1:8080/")
        assert status == 200 and json.loads(body)["boot_id"] == warm["boot_id"]       # Podman's worker, warm
        assert json.loads(body)["served"] == warm["served"] + 1
    finally:
        subprocess.run(["runc", "--root", root, "delete", "--force", "imported"], capture_output=True)
        os.close(output)
        subprocess.run(["umount", "-l", f"{bundle}/rootfs"], capture_output=True)


def test_export_then_import_round_trips_a_snapshot(node, tmp_path):
    st = store.Store(node.store).ensure()
    with st.staging() as staging:
        os.makedirs(os.path.join(staging, "checkpoint"))
        for name, data in (("inventory.img", b"inv"), ("pages-1.img", b"p" * 4096)):
            with open(os.path.join(staging, "checkpoint", name), "wb") as f:
                f.write(data)
        write_json(os.path.join(staging, layout.SPEC_DUMP), {"process": {"args": ["/w"], "env": [], "cwd": "/"}})
        with tarfile.open(os.path.join(staging, layout.ROOTFS_DIFF), "w"):
            pass
        write_json(os.path.join(staging, layout.DELETED_FILES), [])
        from runtime.engine.fingerprinting import of_container
        from runtime.model.manifest import Manifest
        fp = of_container({"process": {"args": ["/w"]}}, node)
        st.commit(staging, Manifest(namespace="default", name="round", created="2026-11-28T00:00:00Z", fingerprint=fp,
                                    fingerprint_id=fp.ident(), source={"container_id": "x"}))
    out = rewarm_cli("export", "round", str(tmp_path / "round.tar.gz"))
    assert out.returncode == 0, out.stderr
    with tarfile.open(tmp_path / "round.tar.gz") as tar:
        assert {"checkpoint/inventory.img", "spec.dump", "rootfs-diff.tar", "manifest.json"} <= set(tar.getnames())
    assert rewarm_cli("import", str(tmp_path / "round.tar.gz"), "--name", "round-again").returncode == 0
    first, again = (st.entries("default", n)[0].manifest.files for n in ("round", "round-again"))
    assert first["checkpoint/pages-1.img"] == again["checkpoint/pages-1.img"]


def test_an_encrypted_export_is_an_oci_archive_that_skopeo_and_import_open_with_the_key_only(node, tmp_path):
    """`export --encrypt-to` seals the checkpoint (ocicrypt's layout) in an OCI archive: skopeo
    decrypts it with the private key, `import --decryption-key` takes it in, and without the key,
    with another key, or altered, the import is refused and the store is unchanged."""
    from registry_fixtures import synthetic_entry
    keys = {}
    for who in ("owner", "stranger"):
        key, pub = str(tmp_path / f"{who}.key"), str(tmp_path / f"{who}.pub")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
        keys[who] = (key, pub)
    pages = os.urandom(200_000)
    synthetic_entry(node, "sealed", pages)
    sealed = str(tmp_path / "sealed.oci.tar")
    assert rewarm_cli("export", "sealed", sealed, "--encrypt-to", keys["owner"][1]).returncode == 0
    with open(sealed, "rb") as f:
        assert pages[:4096] not in f.read()
    copied = tmp_path / "copied"
    run = subprocess.run(["skopeo", "copy", "--decryption-key", keys["owner"][0], f"oci-archive:{sealed}",
                          f"dir:{copied}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (layer,) = json.loads((copied / "manifest.json").read_text())["layers"]
    with tarfile.open(copied / layer["digest"].split(":")[1]) as tar:
        member = tar.extractfile("checkpoint/pages-1.img")
        assert member is not None and member.read() == pages
    st = store.Store(node.store)
    for args, why in (([], "no decryption key was given"),
                      (["--decryption-key", keys["stranger"][0]], "none of the decryption keys opens it")):
        out = rewarm_cli("import", sealed, "--name", "unsealed", *args)
        assert out.returncode == 1 and why in out.stderr, out.stderr
    altered = str(tmp_path / "altered.oci.tar")
    data = bytearray(open(sealed, "rb").read())
    data[len(data) // 2] ^= 1        # a byte of the encrypted layer, nearly all of the file
    open(altered, "wb").write(bytes(data))
    out = rewarm_cli("import", altered, "--name", "unsealed", "--decryption-key", keys["owner"][0])
    assert out.returncode == 1, out.stderr
    assert st.entries("default", "unsealed") == [] and os.listdir(os.path.join(node.store, "tmp")) == []
    out = rewarm_cli("import", sealed, "--name", "unsealed", "--decryption-key", keys["owner"][0])
    assert out.returncode == 0, out.stderr
    with open(st.entries("default", "unsealed")[0].file("checkpoint/pages-1.img"), "rb") as f:
        assert f.read() == pages


def tar_with(path, members: dict[str, bytes], kind: bytes = tarfile.REGTYPE) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            if kind == tarfile.SYMTYPE:
                info.linkname, info.size = "/etc/passwd", 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return str(path)


@pytest.mark.parametrize("members,kind,why", [
    ({"../escape": b"x", "checkpoint/inventory.img": b"i", "spec.dump": b"{}"}, tarfile.REGTYPE, "outside the snapshot"),
    ({"/etc/cron.d/evil": b"x"}, tarfile.REGTYPE, "outside the snapshot"),
    ({"checkpoint/inventory.img": b""}, tarfile.SYMTYPE, "not a plain file"),
    ({"spec.dump": b"{}"}, tarfile.REGTYPE, "not a complete checkpoint archive"),
    ({"checkpoint/inventory.img": b"i", "spec.dump": b"not json"}, tarfile.REGTYPE, "not JSON"),
])
def test_hostile_or_broken_archives_are_refused_and_leave_nothing(node, tmp_path, members, kind, why):
    path = tar_with(tmp_path / "bad.tar", members, kind)
    out = rewarm_cli("import", path, "--name", "bad")
    assert out.returncode != 0 and why in out.stderr, out.stderr
    assert store.Store(node.store).entries("default", "bad") == []
    assert not os.path.exists(tmp_path.parent / "escape") and os.listdir(os.path.join(node.store, "tmp")) == []


def test_truncated_archive_is_refused(node, tmp_path):
    good = tar_with(tmp_path / "good.tar", {"checkpoint/inventory.img": b"i" * 100_000, "spec.dump": b"{}"})
    data = open(good, "rb").read()
    open(tmp_path / "cut.tar", "wb").write(data[: len(data) // 2])
    out = rewarm_cli("import", str(tmp_path / "cut.tar"), "--name", "cut")
    assert out.returncode != 0 and "archive" in out.stderr
    assert store.Store(node.store).entries("default", "cut") == []
