#!/usr/bin/env python3
"""Static import closure of what `python3 -m sglang.launch_server` imports at start, over the kit.

From the ROOTS (the launch module, the server args, the HTTP server and engine, tokenizer manager,
scheduler, detokenizer, model runner, model registry, llama, the triton attention backend, the
xgrammar backend the scheduler creates, torch_memory_saver, sgl_kernel) it follows every import
that runs when a module is imported: module and class level, not inside functions, not under
`if TYPE_CHECKING` or `if __name__ == "__main__"`, not in branches for other platforms (an `if`
whose test names hip/npu/xpu/cpu/musa/mps/aiter/... and not cuda: its `else` is followed); tests on
sys.version_info / sys.platform / platform.* are evaluated for the node (3.12, Linux, x86_64).
An import is soft inside a `try` whose handler catches ImportError/Exception and does not raise
again, in an except handler (a fallback), under `with suppress(...)`, and under an `if` that checks
for a package or an environment switch (is_x_available(), X_AVAILABLE, get_bool_env_var(...)).
A module is hard when a chain of hard imports reaches it from a root. Each top-level package reached outside the kit is classed as
stdlib / node (node-packages.txt) / dropped (resolved.json) / missing. Native modules of the kit
that are reached are listed, and so are modules whose files were trimmed after install.
Dynamic imports (importlib, __import__, lazy module attributes) are not seen: sgl_kernel loads
sm90/common_ops through importlib (see README.md), the model registry imports every module of
sglang.srt.models inside try/except (failures are logged and skipped).

Usage: python3 imports.py --site .sgkit/site --resolved .sgkit/resolved.json [--json OUT] [--roots a,b]
Exit 1 when a hard import reaches a package that is neither in the kit nor on the node, or a
trimmed module. Parse with Python 3.12 (the node's): older parsers may reject newer syntax.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import re
import sys
from pathlib import Path

ROOTS = [
    "sglang.launch_server", "sglang.srt.server_args", "sglang.srt.entrypoints.http_server",
    "sglang.srt.entrypoints.engine", "sglang.srt.managers.tokenizer_manager",
    "sglang.srt.managers.scheduler", "sglang.srt.managers.detokenizer_manager",
    "sglang.srt.model_executor.model_runner", "sglang.srt.models.registry", "sglang.srt.models.llama",
    "sglang.srt.layers.attention.triton_backend", "sglang.srt.constrained.xgrammar_backend",
    "sglang.srt.plugins", "torch_memory_saver", "sgl_kernel",
]
# `if is_x_available():`, `if CUDNN_AVAILABLE:`, `if get_bool_env_var("SGLANG_USE_X"):` -> soft
GUARD = re.compile(r"available|find_spec|\bhas_|_enabled|environ|getenv|get_bool_env_var|\benvs\.", re.I)
OTHER_PLATFORM = re.compile(r"hip|npu|xpu|cpu|musa|mps|hpu|mlu|aiter|ascend|amx|habana|rocm|gfx|tpu", re.I)
# Import names of distributions whose import name is not the distribution's name.
IMPORT_NAMES = {
    "pyyaml": ["yaml"], "pillow": ["PIL"], "python-dateutil": ["dateutil"], "protobuf": ["google"],
    "opencv-python-headless": ["cv2"], "scikit-learn": ["sklearn"], "scikit-image": ["skimage"],
    "nvidia-ml-py": ["pynvml"], "cuda-bindings": ["cuda"], "cuda-core": ["cuda"],
    "cuda-pathfinder": ["cuda"], "cuda-python": ["cuda"], "py-cpuinfo": ["cpuinfo"],
    "attrs": ["attr", "attrs"], "setuptools": ["setuptools", "pkg_resources", "_distutils_hack"],
    "markdown-it-py": ["markdown_it"], "cupy-cuda13x": ["cupy"], "cython": ["Cython", "cython"],
    "jax-cuda13-plugin": ["jax_cuda13_plugin", "jax_plugins"], "jax-cuda13-pjrt": ["jax_plugins"],
    "tensorboard-data-server": ["tensorboard_data_server"], "pytorch-lightning": ["pytorch_lightning"],
    "ipython": ["IPython"], "nvidia-cutlass-dsl": ["cutlass"], "quack-kernels": ["quack"],
    "flash-attn-4": ["flash_attn"], "humming-kernels": ["humming"], "cuda-tile": ["cuda"],
    "nvidia-cudnn-frontend": ["cudnn"], "nvidia-mathdx": ["nvmath"], "smg-grpc-servicer": ["smg_grpc_servicer"],
    "mpi4py": ["mpi4py"], "typing-extensions": ["typing_extensions"], "hf-xet": ["hf_xet"],
}
REMOVED_IN_312 = {"distutils", "imp", "asynchat", "asyncore", "smtpd"}


def import_names(dist: str) -> list[str]:
    if dist in IMPORT_NAMES:
        return IMPORT_NAMES[dist]
    if dist.startswith("nvidia-"):
        return ["nvidia"]
    return [dist.replace("-", "_")]


class Site:
    """Where each module of the kit lives, also for files RECORD lists but the trim removed."""

    def __init__(self, root: Path):
        self.root, self.owner, self.trimmed = root, {}, set()
        for rec in root.glob("*.dist-info/RECORD"):
            dist = rec.parent.name[: -len(".dist-info")].rsplit("-", 1)[0].lower().replace("_", "-")
            for row in csv.reader(rec.read_text().splitlines()):
                if not row or row[0].startswith(("..", "/")) or ".dist-info/" in row[0]:
                    continue
                top = row[0].split("/")[0].split(".")[0]
                self.owner.setdefault(top, dist)
                if row[0].endswith((".py", ".so")) and not (root / row[0]).exists():
                    self.trimmed.add(self.module_of(row[0]))

    @staticmethod
    def module_of(rel: str) -> str:
        parts = rel.split("/")
        parts[-1] = parts[-1].split(".")[0]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def find(self, mod: str) -> Path | None:
        base = self.root.joinpath(*mod.split("."))
        for p in (base.with_name(base.name + ".py"), base / "__init__.py"):
            if p.is_file():
                return p
        so = sorted(base.parent.glob(base.name + ".*.so")) if base.parent.is_dir() else []
        if so:
            return so[0]
        return base if base.is_dir() else None  # a namespace package


def handler_swallows(h: ast.ExceptHandler) -> bool:
    names = []
    if h.type is None:
        names = ["BaseException"]
    else:
        for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]):
            names.append(t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", ""))
    catches = any(n in ("ImportError", "ModuleNotFoundError", "Exception", "BaseException", "OSError",
                        "RuntimeError") for n in names)
    return catches and not any(isinstance(s, ast.Raise) for s in h.body)


def is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


class _Node:  # what sys and platform say on the node, for `if sys.version_info >= (3, 14):` and such
    version_info, platform = (3, 12, 3, "final", 0), "linux"
    python_implementation, system, machine = (lambda: "CPython"), (lambda: "Linux"), (lambda: "x86_64")


def static_value(test: ast.expr):
    """True/False for a test made of sys/platform constants or `__name__ == "__main__"`, else None."""
    names = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
    if names == {"__name__"}:
        return False
    if not names or not names <= {"sys", "_sys", "platform", "_platform"}:
        return None
    try:
        return bool(eval(compile(ast.Expression(test), "<test>", "eval"), {n: _Node for n in names}))
    except Exception:
        return None


def other_platform(test: ast.expr) -> bool:
    src = ast.unparse(test)
    return bool(OTHER_PLATFORM.search(src)) and "cuda" not in src.lower() and not (
        isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not))


def imports_of(path: Path, mod: str, is_pkg: bool):
    """(module name, soft, names) for each import that runs when `mod` is imported."""
    tree = ast.parse(path.read_bytes(), str(path))
    found = []

    def visit(stmts, soft):
        for s in stmts:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(s, ast.Import):
                found.extend((a.name, soft, []) for a in s.names)
            elif isinstance(s, ast.ImportFrom):
                base = s.module or ""
                if s.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (s.level - 1)]
                    base = ".".join(pkg + ([s.module] if s.module else []))
                found.append((base, soft, [a.name for a in s.names]))
            elif isinstance(s, ast.If):
                value = static_value(s.test)
                if value is not None:
                    visit(s.body if value else s.orelse, soft)
                elif is_type_checking(s.test):
                    visit(s.orelse, soft)
                elif other_platform(s.test):
                    visit(s.orelse, soft)
                else:
                    visit(s.body, soft or bool(GUARD.search(ast.unparse(s.test))))
                    visit(s.orelse, soft)
            elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
                swallow = any(handler_swallows(h) for h in s.handlers)
                visit(s.body, soft or swallow)
                for h in s.handlers:  # a fallback runs only when the body failed
                    visit(h.body, True)
                visit(s.orelse, soft or swallow)
                visit(s.finalbody, soft)
            elif isinstance(s, (ast.With, ast.AsyncWith)):  # contextlib.suppress(ImportError) -> soft
                visit(s.body, soft or any("suppress(" in ast.unparse(i.context_expr) for i in s.items))
            elif isinstance(s, (ast.For, ast.While, ast.ClassDef)):
                visit(s.body, soft)
                visit(getattr(s, "orelse", []), soft)
            elif type(s).__name__ == "Match":
                for c in s.cases:
                    visit(c.body, soft)

    visit(tree.body, False)
    return found


def closure(site: Site, roots: list[str]):
    """modules of the kit reached (name -> hard), externals (top -> {hard, by}), unparsed files."""
    reached, parent, external, unparsed = {}, {}, {}, []
    queue = [(r, True, "(root)") for r in roots]
    while queue:
        mod, hard, by = queue.pop()
        top = mod.split(".")[0]
        if top not in site.owner and site.find(top) is None:
            e = external.setdefault(top, {"hard": False, "by": []})
            if hard and not e["hard"]:
                e["hard"], e["by"] = True, []
            if hard == e["hard"] and len(e["by"]) < 3 and by not in e["by"]:
                e["by"].append(by)  # the importers of its kind (hard ones, once one is hard)
            continue
        if mod in reached and (reached[mod] or not hard):
            continue
        parts = mod.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a and a.b first
            queue.append((".".join(parts[:i]), hard, by))
        reached[mod] = hard
        parent[mod] = by
        path = site.find(mod)
        if path is None or path.is_dir() or path.suffix == ".so":
            continue
        try:
            found = imports_of(path, mod, path.name == "__init__.py")
        except SyntaxError as e:
            unparsed.append(f"{mod}: {e}")
            continue
        for name, soft, names in found:
            if not name:
                continue
            queue.append((name, hard and not soft, mod))
            for n in names:  # `from pkg import sub` imports pkg.sub when it is a module
                sub = f"{name}.{n}"
                if n != "*" and (site.find(sub) is not None or sub in site.trimmed):
                    queue.append((sub, hard and not soft, mod))
    return reached, parent, external, unparsed


def chain(parent: dict, mod: str) -> str:
    out = [mod]
    while (mod := parent.get(mod, "(root)")) != "(root)" and mod not in out:
        out.append(mod)
    return " <- ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default=".sgkit/site")
    ap.add_argument("--resolved", default=".sgkit/resolved.json")
    ap.add_argument("--node-packages", default=str(Path(__file__).with_name("node-packages.txt")),
                    help="what the node's image brings")
    ap.add_argument("--roots", default=",".join(ROOTS))
    ap.add_argument("--json")
    a = ap.parse_args()
    site = Site(Path(a.site))
    res = json.loads(Path(a.resolved).read_text())
    node_dists = [l.split("#", 1)[0].strip().lower() for l in Path(a.node_packages).read_text().splitlines()
                  if l.split("#", 1)[0].strip()]
    node = {m: d for d in node_dists + list(res["node"]) for m in import_names(d)}
    dropped = {m: d for d in res["dropped"] for m in import_names(d)}
    stdlib = (set(sys.stdlib_module_names) - REMOVED_IN_312) | set(sys.builtin_module_names) | {"__future__", "__main__"}

    reached, parent, external, unparsed = closure(site, a.roots.split(","))
    rows = {}
    for top, e in sorted(external.items()):
        kind = ("stdlib" if top in stdlib else "node" if top in node else
                "dropped" if top in dropped else "missing")
        rows[top] = {"class": kind, "hard": e["hard"], "by": e["by"],
                     "dist": node.get(top) or dropped.get(top),
                     "chain": chain(parent, e["by"][0]) if e["by"] else ""}
    kit = sorted({site.owner.get(m.split(".")[0], m.split(".")[0]) for m in reached})
    native = sorted(m for m in reached if (p := site.find(m)) is not None and p.suffix == ".so")
    trimmed = {m: h for m, h in reached.items() if m in site.trimmed}
    report = {"roots": a.roots.split(","), "modules_reached": len(reached),
              "modules_hard": sum(reached.values()), "kit_dists_reached": kit,
              "native_modules_reached": {m: reached[m] for m in native},
              "trimmed_modules_reached": trimmed, "external": rows, "unparsed": unparsed}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")

    print(f"static import closure: {len(reached)} modules of the kit ({report['modules_hard']} hard), "
          f"{len(kit)} kit distributions")
    for kind in ("node", "dropped", "missing"):
        for hard in (True, False):
            tops = [t for t, r in rows.items() if r["class"] == kind and r["hard"] == hard]
            if tops:
                print(f"  {kind:8s} {'hard' if hard else 'soft'}: {', '.join(tops)}")
    native_txt = ", ".join(f"{m} ({'hard' if h else 'soft'})" for m, h in report["native_modules_reached"].items())
    print(f"  native modules reached: {native_txt or '-'}")
    print(f"  trimmed modules reached: {trimmed or '-'}")
    for u in unparsed:
        print(f"  UNPARSED {u}")
    bad = [t for t, r in rows.items() if r["hard"] and r["class"] in ("missing", "dropped")]
    bad += [m for m, h in trimmed.items() if h]
    for t in bad:
        why = rows[t]["class"] + " imported by " + rows[t]["chain"] if t in rows else "trimmed: " + chain(parent, t)
        print(f"FAIL: hard import of {t} ({why})")
    print("RESULT:", "FAIL" if bad else "OK: every hard import is in the kit, the stdlib or on the node")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
