"""The files a worker's quiesce hook names for reading back: what rewarm takes from the answer,
where it finds them on the host (through the container's bind mounts only), and what it leaves out."""
from __future__ import annotations

import json
import os

from runtime.snapshot import page_cache, reload_files
from runtime.model.manifest import ReloadFile
from runtime.model.oci_spec import bind_mount_of


def spec_with(*mounts: tuple[str, str]) -> dict:
    return {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       *({"destination": d, "type": "bind", "source": s, "options": ["rbind", "ro"]} for d, s in mounts)]}


def test_the_deepest_and_latest_mount_holds_a_path_and_only_a_bind_mount_counts():
    spec = spec_with(("/models", "/srv/a"), ("/models/llm", "/srv/b"), ("/models/llm", "/srv/c"))
    spec["mounts"].append({"destination": "/models/cache", "type": "tmpfs", "source": "tmpfs"})
    assert bind_mount_of(spec, "/models/llm/x.safetensors") == ("/srv/c", "x.safetensors")
    assert bind_mount_of(spec, "/models/other/y") == ("/srv/a", "other/y")
    assert bind_mount_of(spec, "/models/cache/w") is None          # a tmpfs over the bind: not the host's file
    assert bind_mount_of(spec, "/modelsx/y") is None and bind_mount_of(spec, "/proc/self/mem") is None


def test_an_answer_names_absolute_paths_and_says_what_it_left_out():
    answer = json.dumps({"sleeping": True, "reload_files": ["/m/a", "relative", "/m/../etc/shadow", 7, "/m/b"]})
    paths, problems = reload_files.named_in(answer)
    assert paths == ["/m/a", "/m/b"]
    assert len(problems) == 3 and any("'..'" in p for p in problems)
    assert reload_files.named_in("") == ([], []) and reload_files.named_in("ok") == ([], [])
    assert reload_files.named_in("[" * 200_000) == ([], [])          # a nesting bomb is no answer
    assert reload_files.named_in(json.dumps({"reload_files": ["//m//a/"]})) == (["/m/a"], [])
    assert reload_files.named_in(json.dumps({"reload_files": "/m/a"})) == ([], ["reload_files is not a list"])
    too_many = json.dumps({"reload_files": [f"/m/{i}" for i in range(reload_files.MAX_FILES + 5)]})
    paths, problems = reload_files.named_in(too_many)
    assert len(paths) == reload_files.MAX_FILES and "5 more" in problems[0]


def test_only_regular_files_below_the_mount_source_are_taken(tmp_path):
    source = tmp_path / "models"
    (source / "llm").mkdir(parents=True)
    (source / "llm" / "w.safetensors").write_bytes(b"w" * 1000)
    (source / "llm" / "escape").symlink_to("/etc/passwd")             # resolves outside the source
    (source / "llm" / "inside").symlink_to(source / "llm" / "w.safetensors")
    (source / "llm" / "a-directory").mkdir()
    (tmp_path / "secret").write_text("x")
    spec = spec_with(("/models", str(source)))
    answer = json.dumps({"reload_files": ["/models/llm/w.safetensors", "/models/llm/escape", "/models/llm/inside",
                                          "/models/llm/a-directory", "/models/llm/missing", "/etc/hostname"]})
    found, problems = reload_files.resolve(spec, [answer])
    real = os.path.realpath(source / "llm" / "w.safetensors")
    assert found == (ReloadFile("/models/llm/w.safetensors", real, 1000),)   # the link inside names the same file
    assert len(problems) == 4 and all("not a regular file under a bind mount" in p for p in problems)


def test_files_count_on_a_node_only_as_regular_files_of_the_recorded_size(tmp_path):
    data = tmp_path / "w.bin"
    data.write_bytes(b"x" * 10)
    files = (ReloadFile("/m/w.bin", str(data), 10), ReloadFile("/m/gone", str(tmp_path / "gone"), 1),
             ReloadFile("/m/dev", "/dev/zero", 0))
    spec = spec_with(("/m", str(tmp_path)))
    assert reload_files.on_this_node(files) == [(str(data), os.path.getsize(data))]
    assert reload_files.on_this_node(files, spec) == [(str(data), os.path.getsize(data))]
    assert reload_files.missing(files, spec) == ["/m/gone", "/m/dev"]
    data.write_bytes(b"x" * 11)                       # changed since the capture: not warmed
    assert reload_files.on_this_node(files) == [] and "/m/w.bin" in reload_files.missing(files, spec)
    data.unlink()
    os.mkfifo(data)                                   # a FIFO in its place is neither warmed nor opened
    assert reload_files.on_this_node(files) == [] and page_cache.warm([str(data)], 2) == 0


def test_a_presets_model_directory_counts_every_file_below_it_that_stays_inside_the_mount(tmp_path):
    """vLLM's --model DIR (or a Hugging Face snapshot's links into its blobs): each file below it."""
    source = tmp_path / "hub"
    snap = source / "models--org--m" / "snapshots" / "abc"
    blobs = source / "models--org--m" / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "1").write_bytes(b"w" * 100)
    (snap / "model.safetensors").symlink_to("../../blobs/1")
    (snap / "config.json").write_text("{}")
    (snap / "leak").symlink_to("/etc/passwd")
    spec = spec_with(("/root/.cache/huggingface/hub", str(source)))
    found, problems = reload_files.resolve(spec, [], ("/root/.cache/huggingface/hub/models--org--m/snapshots",))
    got = {f.path: f.size for f in found}
    prefix = "/root/.cache/huggingface/hub/models--org--m/snapshots/abc/"
    assert got == {prefix + "config.json": 2, prefix + "model.safetensors": 100}
    assert problems == [prefix + "leak is not a regular file under a bind mount of the container"]
    _, outside = reload_files.resolve(spec, [], ("/models/not-mounted",))
    assert outside == ["/models/not-mounted is not a regular file under a bind mount of the container"]
