"""The layer diagram of artifact/docs/layers.md, enforced on the module graph (module-level and
function-level imports alike, read with `ast`):

    runtime (artifact/runtime) ← artifact ← analysis
    runtime                    ← train    ← analysis      (train uses artifact only for QAT)

no import cycles, the runtime layer imports nothing but itself, the standard library and the
libraries a submission may need, the command line lives only in analysis/, and no module reaches
for another module's private names.
"""

import ast
import sys

from artifact.submission import ENTRY, RUNTIME_PACKAGE, runtime_modules, runtime_sources
from tests.module_graph import ROOT, find_cycles, module_edges, project_modules

MODULES = project_modules()
EDGES = module_edges(MODULES)
# What a submission's code may import besides the standard library: numerics, the tokenizer,
# the codecs the decoder reads, numba (the rANS decoder's JIT, optional), and safetensors (the
# checkpoint reader of the layer, never shipped).
RUNTIME_THIRD_PARTY = {"numpy", "torch", "sentencepiece", "brotli", "zstandard", "numba", "safetensors"}
QAT_MODULE = "train.qat"


def layer(module: str) -> str:
    if module.startswith("artifact.runtime"):
        return "runtime"
    return module.split(".")[0]


def test_the_graph_is_read():
    assert len(MODULES) > 40 and len(EDGES) > 100
    assert any(e.source == "analysis.cli" for e in EDGES)


def test_no_import_cycles():
    assert find_cycles(EDGES) == []


def test_every_import_follows_the_layer_direction():
    allowed = {"runtime": {"runtime"}, "artifact": {"runtime", "artifact"}, "train": {"runtime", "train"},
               "analysis": {"runtime", "artifact", "train", "analysis"}}
    wrong = [f"{e.source}:{e.line} imports {e.target}" for e in EDGES
             if layer(e.target) not in allowed[layer(e.source)]
             and not (e.source == QAT_MODULE and layer(e.target) == "artifact")]
    assert wrong == []


def _third_party(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "__future__"}


def test_the_runtime_imports_only_itself_and_its_libraries():
    for name, path in MODULES.items():
        if layer(name) == "runtime":
            assert _third_party(path) <= RUNTIME_THIRD_PARTY, name
            # relative imports only: the layer runs under the name it ships as
            tree = ast.parse(path.read_text(encoding="utf-8"))
            absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level
                        and (n.module or "").split(".")[0] in ("artifact", "train", "analysis")]
            assert absolute == [], name


def test_the_compact_run_py_is_built_from_the_runtime_layer_alone():
    sources = runtime_sources(ttt=True)
    assert set(sources) == {ENTRY} | {f"{RUNTIME_PACKAGE}/{m}.py" for m in runtime_modules(ttt=True)} | \
        {f"{RUNTIME_PACKAGE}/__init__.py"}
    assert "ttt" in runtime_modules(ttt=True) and "ttt" not in runtime_modules()
    # the kernel pieces a submission never runs stay out of it
    assert {"files", "checkpoint"}.isdisjoint(runtime_modules(ttt=True))


def test_the_command_line_lives_only_in_analysis():
    offenders = []
    for name, path in MODULES.items():
        if layer(name) == "analysis":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                offenders.append(f"{name}: imports argparse")
            if isinstance(node, ast.FunctionDef) and node.name == "register":
                offenders.append(f"{name}: defines register()")
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__":
                offenders.append(f"{name}: has a __main__ block")
    assert offenders == []


def test_function_level_imports_are_few_and_say_why():
    # A function-level import of a project module is allowed only where it keeps a module out of
    # what a submission ships (the TTT module), and its line says so.
    lazy = [e for e in EDGES if e.lazy]
    for e in lazy:
        line = MODULES[e.source].read_text(encoding="utf-8").splitlines()[e.line - 1]
        assert "# lazy:" in line, f"{e.source}:{e.line}: {line.strip()}"
    assert {(e.source, e.target) for e in lazy} <= {("artifact.runtime.run", "artifact.runtime.ttt")}


def test_no_module_imports_another_modules_private_names():
    private = [f"{e.source}:{e.line} takes {e.target}.{n}" for e in EDGES for n in e.names
               if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_package_inits_import_nothing():
    # Importing artifact.runtime must not drag in the packer, nor analysis the whole CLI.
    for pkg in ("artifact", "artifact/runtime", "train", "analysis"):
        tree = ast.parse((ROOT / pkg / "__init__.py").read_text(encoding="utf-8"))
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], pkg
