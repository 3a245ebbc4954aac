"""The shape of the code, checked like behaviour: the layers (import-linter contracts in
pyproject.toml), no import cycles anywhere, `mypy --strict` clean, and the old name gone."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import grimp

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def test_the_layer_contracts_hold():
    out = subprocess.run([os.path.join(BIN, "lint-imports")], cwd=CHECKOUT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert "0 broken" in out.stdout


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("runtime", "oci_hooks")
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == []


def test_mypy_strict_is_clean():
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=CHECKOUT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_the_old_name_is_gone_from_the_tree():
    # The other project of that name may be cited, and the cgroup v1 freezer's state is spelled so.
    old = re.compile("(?-i:(?!TH" + "AWED))th" + "aw(?!-vllm)", re.IGNORECASE)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    found = []
    for rel in filter(None, files):
        path = os.path.join(CHECKOUT, rel)
        if old.search(rel):
            found.append(rel)
        elif os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            found += [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}" for m in old.finditer(text)]
    assert found == []


def test_the_pipelines_docstrings_list_exactly_the_steps_they_run():
    """restore.py and capture.py read as a step table plus the steps: the docstring's arrows name
    the table's steps, in order."""
    import re

    from runtime.engine import capture, restore
    for module, steps in ((restore, [step for _, step in restore.STEPS]), (capture, list(capture.STEPS))):
        chain = (module.__doc__ or "").split("\n\n")[1].split(", then")[0]   # what follows runs after the table
        named = [re.match(r"\s*([a-z_]+)", part).group(1) for part in chain.split("->")]  # type: ignore[union-attr]
        assert named == [s.__name__ for s in steps], (module.__name__, named)


def test_no_product_function_takes_more_than_six_parameters():
    """Wide calls grow a value instead (formats.Transfer, bake.Bake, ...)."""
    import ast
    wide = []
    for top in ("runtime", "oci_hooks"):
        for dirpath, _, filenames in os.walk(os.path.join(CHECKOUT, top)):
            for name in (f for f in filenames if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        a = node.args
                        params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                        if len(params) + bool(a.vararg) > 6:
                            wide.append(f"{os.path.relpath(path, CHECKOUT)}:{node.lineno} {node.name}")
    assert wide == []


def test_the_cli_offers_the_registry_formats_there_are():
    from runtime.cli.main import parser
    from runtime.engine.formats import FORMATS
    sub = next(a for a in parser()._actions if a.choices and "push" in a.choices)   # the subcommands
    for verb in ("push", "pull"):
        (fmt,) = [a for a in sub.choices[verb]._actions if a.dest == "format"]
        assert list(fmt.choices) == list(FORMATS)
