"""Write a submission folder: everything that ships, byte-deterministic, all or nothing.

A submission is a folder that scores itself with nothing but its own files:

    model.blob            the artifact (artifact.container.build_blob)
    config.json           model config + eval defaults (seq_len; `ttt`: the test-time-training
                          settings, present only when the submission scores with TTT); for a
                          user's model, the model section names its shipped file's factory
    run.py                a launcher that runs `golf_runtime.run.main()`
    NAME.py, ...          a user's model file and counted code files (`--code-file`), shipped
                          as they are beside run.py in both code forms (never inside the stub:
                          their bytes are the user's own, and a model file that is also a code
                          file, e.g. train_gpt.py, ships and counts once)
    golf_runtime/...      the runtime layer's modules that the run entry imports (computed from
                          their imports: `runtime_sources`), ttt.py only with TTT settings
    submission.json       not shipped/counted: what was packed (recipe, checkpoint hash, sizes)

With `compact=True` the launcher and every shipped module go into a single self-extracting
`run.py` instead: sources minified (docstrings dropped, re-printed with `ast`, checked to parse
back to the same tree), compressed (the smaller of lzma and brotli), base85-embedded, served to
`import` by a small in-memory finder. That stub is the file counted.

The runtime layer imports itself relatively, so it runs under the short package name it ships
as. The folder is built beside `out_dir` and swapped into place (artifact.runtime.files); an
existing `out_dir` is replaced only when it is empty or a previous submission (its
submission.json says so).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import lzma
from pathlib import Path
from typing import Callable

from artifact.container import build_blob
from artifact.runtime.errors import ArtifactError, ConfigError
from artifact.runtime.files import atomic_write, check_replaceable, marked_as, replace_folder

FORMAT = "golf-submission"
FORMAT_VERSION = 1
MARKER = "submission.json"
BLOB = "model.blob"
CONFIG = "config.json"
ENTRY = "run.py"
RESERVED = {BLOB, CONFIG, ENTRY, MARKER}
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
RUNTIME_PACKAGE = "golf_runtime"  # the name the runtime layer ships under
RUN_MODULE = "run"  # the runtime module whose main() scores the submission
TTT_MODULE = "ttt"  # shipped exactly when config.json's eval section has a `ttt` table
# The launcher (the plain form's run.py; the compact stub runs it too): the folder goes first on
# sys.path (verify runs `python -I`, which leaves it off), then the runtime's entry.
LAUNCHER = f"""import os,sys
D=os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0,D)
from {RUNTIME_PACKAGE}.{RUN_MODULE} import main
sys.exit(main(folder=D))
"""


# ----------------------------------------------------------------------------- sources
def _read_source(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a module to ship ({e})") from None
    return data


def _module_level_imports(source: bytes, name: str) -> set[str]:
    """Sibling modules a runtime module imports at module level (`from .x import …`)."""
    found = set()
    for node in ast.parse(source, name).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
    return found


def runtime_modules(ttt: bool = False) -> list[str]:
    """Names of the runtime modules a submission ships: the run entry and everything it imports
    at module level, transitively (+ the TTT module and its imports with `ttt`). Imports inside
    functions are not followed: that is how the TTT module stays out of a plain submission."""
    return runtime_closure([RUN_MODULE] + ([TTT_MODULE] if ttt else []))


def runtime_closure(start) -> list[str]:
    """`start` (runtime module names) and every runtime module they import at module level."""
    todo, seen = list(start), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = RUNTIME_DIR / f"{name}.py"
        todo += sorted(_module_level_imports(_read_source(path), str(path)) - seen)
    return sorted(seen)


def write_runtime_package(folder: str | Path, start=("decoder",)) -> Path:
    """Copy the runtime modules `start` needs into FOLDER/golf_runtime (e.g. to run the decoder
    alone in a fresh process: `from golf_runtime.decoder import decode`); returns the package."""
    package = Path(folder) / RUNTIME_PACKAGE
    for name in runtime_closure(start):
        atomic_write(package / f"{name}.py", _read_source(RUNTIME_DIR / f"{name}.py"))
    atomic_write(package / "__init__.py", b"")
    return package


def runtime_sources(ttt: bool = False) -> dict[str, bytes]:
    """rel path -> bytes of every shipped file of the runtime (its package, and the launcher)."""
    sources = {f"{RUNTIME_PACKAGE}/{name}.py": _read_source(RUNTIME_DIR / f"{name}.py") for name in runtime_modules(ttt)}
    sources[f"{RUNTIME_PACKAGE}/__init__.py"] = b""
    sources[ENTRY] = LAUNCHER.encode()
    return dict(sorted(sources.items()))


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def minify_source(source: str, name: str = "<module>") -> str:
    """The source without docstrings and comments, re-printed by `ast.unparse`.

    Checked: the result must parse back to exactly the stripped tree, else the original source is
    returned unchanged (so minifying can cost bytes but never correctness)."""
    if not source.strip():
        return ""
    try:
        stripped = _strip_docstrings(ast.parse(source, name))
        out = ast.unparse(stripped) + "\n"
        same = ast.dump(ast.parse(out, name)) == ast.dump(stripped)
    except (SyntaxError, ValueError, RecursionError) as e:
        raise ConfigError(f"{name}: cannot parse a module to ship ({e})") from None
    return out if same else source


# ----------------------------------------------------------------------------- compact stub
_STUB = """\
import base64,json,os,sys,{lib}
from importlib.util import spec_from_loader as F
D=os.path.dirname(os.path.abspath(__file__))
S=json.loads({lib}.decompress(base64.b85decode(b'{payload}')))
class L:
 def find_spec(s,n,p=None,t=None):
  r=n.replace('.','/')
  for k in(r+'/__init__.py',r+'.py'):
   if k in S:m=F(n,s,origin=os.path.join(D,k),is_package=k.endswith('__init__.py'));m.has_location=True;return m
 def create_module(s,m):0
 def exec_module(s,m):exec(compile(S[os.path.relpath(m.__file__,D).replace(os.sep,'/')],m.__file__,'exec'),m.__dict__)
sys.meta_path.insert(0,L())
exec(compile(S['run.py'],__file__,'exec'),{{'__name__':'__main__','__file__':__file__}})
"""


def _compressors(allowed=("lzma", "brotli")):
    if "lzma" in allowed:
        yield "lzma", lambda raw: lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if "brotli" not in allowed:
        return
    try:
        import brotli
    except ImportError:  # brotli is optional for the stub: lzma is in the standard library
        return
    yield "brotli", lambda raw: brotli.compress(raw, quality=11, lgwin=24)


def sources_json(sources: dict[str, str]) -> bytes:
    """The sources as one compact JSON object (sorted keys): what a self-extracting stub embeds."""
    return json.dumps(sources, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def smallest_stub(raw: bytes, render: Callable[[str, str], str], allowed=("lzma", "brotli")) -> bytes:
    """The smallest `render(library, base85 payload)` over the `allowed` compressors (lzma from
    the standard library; brotli when installed) of `raw`. Deterministic."""
    best = None
    for lib, compress in _compressors(allowed):
        stub = render(lib, base64.b85encode(compress(raw)).decode("ascii")).encode()
        if best is None or len(stub) < len(best):
            best = stub
    if best is None:
        raise ConfigError(f"no compressor among {allowed} for a self-extracting stub")
    return best


def build_stub(sources: dict[str, str], minify: bool = True) -> bytes:
    """One self-extracting `run.py` holding `sources` (rel path -> source, including 'run.py'):
    the smallest of the available compressors' stubs. Deterministic."""
    if ENTRY not in sources:
        raise ConfigError("the compact stub needs the entry point 'run.py' among its sources")
    packed = {k: minify_source(v, k) if minify else v for k, v in sorted(sources.items())}
    return smallest_stub(sources_json(packed), lambda lib, payload: _STUB.format(lib=lib, payload=payload))


# ----------------------------------------------------------------------------- folder
def _json_bytes(obj, indent=None) -> bytes:
    sep = (",", ":") if indent is None else (",", ": ")
    return (json.dumps(obj, sort_keys=True, indent=indent, separators=sep, allow_nan=False) + "\n").encode()


def read_code_files(paths) -> dict[str, bytes]:
    """{file name: bytes} of code files shipped (and counted) as they are, e.g. a competitor's
    train_gpt.py; the same name twice must be the same bytes."""
    out: dict[str, bytes] = {}
    for path in paths:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the code file ({e.strerror or e})") from None
        if out.get(path.name, data) != data:
            raise ConfigError(f"{path}: another code file named {path.name} with different bytes; rename one")
        out[path.name] = data
    return out


def merge_shipped(*groups: dict[str, bytes]) -> dict[str, bytes]:
    """Files shipped beside run.py (a user's model file, code files), checked: plain names, none
    of the submission's own, one set of bytes per name (a model file that is also a code file
    ships once)."""
    out: dict[str, bytes] = {}
    for group in groups:
        for name, data in (group or {}).items():
            if name in RESERVED or name == RUNTIME_PACKAGE or Path(name).name != name or name.startswith("."):
                raise ConfigError(f"cannot ship a file named {name!r} beside run.py (a submission's own name, "
                                  "or not a plain file name)")
            if out.get(name, data) != data:
                raise ConfigError(f"two different files named {name!r} would ship; rename one")
            out[name] = data
    return dict(sorted(out.items()))


def plan_files(entries, model_config: dict, eval_defaults: dict, compact: bool = False,
               blob: bytes | None = None, extra_files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Every shipped file's bytes by relative path (the folder, minus submission.json);
    `extra_files` ship as they are, beside run.py, in either code form."""
    if not isinstance(model_config, dict) or not isinstance(eval_defaults, dict):
        raise ConfigError("model_config and eval_defaults must be dicts")
    ttt = eval_defaults.get("ttt")
    if ttt is not None and not isinstance(ttt, dict):
        raise ConfigError("eval_defaults['ttt'] must be a dict of TTT settings")
    sources = runtime_sources(ttt=ttt is not None)
    files = {BLOB: blob if blob is not None else build_blob(entries),
             CONFIG: _json_bytes({"model": model_config, "eval": eval_defaults})}
    if compact:
        files[ENTRY] = build_stub({rel: src.decode("utf-8") for rel, src in sources.items()})
    else:
        files.update(sources)  # the modules exactly as they are in the project
    files.update(merge_shipped(extra_files))
    return dict(sorted(files.items()))


def is_submission(folder: str | Path) -> bool:
    """Whether `folder` holds a submission written by this tool (its marker file says so)."""
    return marked_as(folder, MARKER, FORMAT)


def check_out_dir(out_dir) -> None:
    """Raise ArtifactError unless `out_dir` is absent, empty or a previous submission."""
    check_replaceable(out_dir, MARKER, FORMAT, "a previous submission", ArtifactError)


def write_submission(out_dir, entries, model_config: dict, eval_defaults: dict, compact: bool = False,
                     info: dict | None = None, extra_files: dict[str, bytes] | None = None) -> dict:
    """Write the submission folder `out_dir` atomically; return what was written.

    `entries`: TensorEntry list for the blob; `model_config`: config.json's model section (the
    runtime ModelConfig fields, or a shipped model file's entry and config); `extra_files`:
    {name: bytes} shipped as they are beside run.py (the model file, counted code files);
    `eval_defaults`: e.g. {"seq_len": 1024} (a "ttt" table ships the TTT module); `info`: extra
    JSON-able facts for submission.json (recipe, checkpoint hash, figures: keep them
    deterministic). Returns {"out_dir", "compact", "files": [{"path", "bytes", "sha256"}],
    "blob_bytes", "shipped_bytes"}."""
    out_dir = Path(out_dir)
    files = plan_files(entries, model_config, eval_defaults, compact, extra_files=extra_files)
    listing = [{"path": rel, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for rel, b in files.items()]
    record = {"format": FORMAT, "version": FORMAT_VERSION, "compact": bool(compact), "entry": ENTRY,
              "files": listing, **(info or {})}
    try:
        marker = _json_bytes(record, indent=1)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"submission info is not plain JSON: {e}") from None
    check_out_dir(out_dir)

    def build(tmp: Path) -> None:
        for rel, data in {**files, MARKER: marker}.items():
            atomic_write(tmp / rel, data)

    replace_folder(out_dir, build)
    return {"out_dir": str(out_dir), "compact": bool(compact), "files": listing,
            "blob_bytes": len(files[BLOB]), "shipped_bytes": sum(len(b) for b in files.values())}
