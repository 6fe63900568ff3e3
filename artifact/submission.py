"""Write a submission folder: everything that ships, byte-deterministic, all or nothing.

A submission is a folder that scores itself with nothing but its own files:

    model.blob            the artifact (artifact.container.build_blob)
    config.json           model config + eval defaults (seq_len; `ttt`: the test-time-training
                          settings, present only when the submission scores with TTT)
    run.py                the entry point (artifact/shipped_run.py, copied verbatim)
    artifact/..., train/...   copies of the project modules run.py imports, same layout,
                          with an empty __init__.py per package
    submission.json       not shipped/counted: what was packed (recipe, checkpoint hash, sizes)

The caller names the modules to ship (`ship_modules`), so the list lives in one place and this
package never imports train/. With `compact=True` the entry and every shipped module go into a
single self-extracting `run.py` instead: sources minified (docstrings dropped, re-printed with
`ast`, checked to parse back to the same tree), compressed (the smaller of lzma and brotli),
base85-embedded, served to `import` by a small in-memory finder. That stub is the file counted.

The folder is built in a temporary folder beside `out_dir` and renamed into place; an existing
`out_dir` is replaced only when it is empty or a previous submission (its submission.json says so).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import lzma
import os
import shutil
import tempfile
from pathlib import Path

from artifact.container import build_blob
from artifact.errors import ArtifactError, ConfigError

FORMAT = "golf-submission"
FORMAT_VERSION = 1
MARKER = "submission.json"
BLOB = "model.blob"
CONFIG = "config.json"
ENTRY = "run.py"
ENTRY_TEMPLATE = Path(__file__).resolve().with_name("shipped_run.py")
RESERVED = {BLOB, CONFIG, ENTRY, MARKER}
TTT_MODULE = "train/ttt.py"  # shipped exactly when config.json's eval section has a `ttt` table


# ----------------------------------------------------------------------------- sources
def _read_source(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a module to ship ({e})") from None
    return data


def _module_sources(ship_modules) -> dict[str, bytes]:
    """rel path -> bytes of every shipped module, plus an empty __init__.py per package."""
    sources: dict[str, bytes] = {}
    for src, rel in ship_modules:
        rel = Path(rel).as_posix()
        if rel in RESERVED or rel.startswith(("/", "../")) or "/../" in rel or not rel.endswith(".py"):
            raise ConfigError(f"cannot ship {src} as {rel!r}: needs a relative .py path inside the folder")
        if rel in sources:
            raise ConfigError(f"module {rel!r} is listed twice in the shipped modules")
        sources[rel] = _read_source(src)
    for rel in list(sources):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            sources.setdefault("/".join(parts[:i]) + "/__init__.py", b"")
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


def _compressors():
    yield "lzma", lambda raw: lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    try:
        import brotli
    except ImportError:  # brotli is optional for the stub: lzma is in the standard library
        return
    yield "brotli", lambda raw: brotli.compress(raw, quality=11, lgwin=24)


def build_stub(sources: dict[str, str], minify: bool = True) -> bytes:
    """One self-extracting `run.py` holding `sources` (rel path -> source, including 'run.py'):
    the smallest of the available compressors' stubs. Deterministic."""
    if ENTRY not in sources:
        raise ConfigError("the compact stub needs the entry point 'run.py' among its sources")
    packed = {k: minify_source(v, k) if minify else v for k, v in sorted(sources.items())}
    raw = json.dumps(packed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    best = None
    for lib, compress in _compressors():
        payload = base64.b85encode(compress(raw)).decode("ascii")
        stub = _STUB.format(lib=lib, payload=payload).encode()
        if best is None or len(stub) < len(best):
            best = stub
    return best


# ----------------------------------------------------------------------------- folder
def _json_bytes(obj, indent=None) -> bytes:
    sep = (",", ":") if indent is None else (",", ": ")
    return (json.dumps(obj, sort_keys=True, indent=indent, separators=sep, allow_nan=False) + "\n").encode()


def plan_files(entries, model_config: dict, eval_defaults: dict, ship_modules, compact: bool = False,
               blob: bytes | None = None) -> dict[str, bytes]:
    """Every shipped file's bytes by relative path (the folder, minus submission.json)."""
    if not isinstance(model_config, dict) or not isinstance(eval_defaults, dict):
        raise ConfigError("model_config and eval_defaults must be dicts")
    sources = {**_module_sources(ship_modules), ENTRY: _read_source(ENTRY_TEMPLATE)}
    _check_ttt_shipped(eval_defaults, sources)
    files = {BLOB: blob if blob is not None else build_blob(entries),
             CONFIG: _json_bytes({"model": model_config, "eval": eval_defaults})}
    if compact:
        files[ENTRY] = build_stub({rel: src.decode("utf-8") for rel, src in sources.items()})
    else:
        files.update(sources)  # the modules exactly as they are in the project
    return dict(sorted(files.items()))


def _check_ttt_shipped(eval_defaults: dict, sources: dict) -> None:
    """A TTT setting needs the TTT module in the folder, and the module ships only with one (a
    submission without TTT must not pay for its bytes)."""
    has_ttt, ships_ttt = eval_defaults.get("ttt") is not None, TTT_MODULE in sources
    if has_ttt and not isinstance(eval_defaults["ttt"], dict):
        raise ConfigError("eval_defaults['ttt'] must be a dict of TTT settings")
    if has_ttt != ships_ttt:
        raise ConfigError(f"eval settings {'with' if has_ttt else 'without'} ttt but {TTT_MODULE} is "
                          f"{'not ' if has_ttt else ''}among the shipped modules")


def is_submission(folder: str | Path) -> bool:
    """Whether `folder` holds a submission written by this tool (its marker file says so)."""
    marker = Path(folder) / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out_dir) -> None:
    """Raise ArtifactError unless `out_dir` is absent, empty or a previous submission."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ArtifactError(f"{out_dir}: exists and is not a folder; refusing to replace it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_submission(out_dir):
        raise ArtifactError(f"{out_dir}: folder exists and is not a previous submission "
                            f"(no {MARKER} of format {FORMAT!r}); refusing to overwrite it")


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished `tmp` to `out_dir`, moving a previous submission aside first."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old / "x")
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old / "x", out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_submission(out_dir, entries, model_config: dict, eval_defaults: dict, ship_modules,
                     compact: bool = False, info: dict | None = None) -> dict:
    """Write the submission folder `out_dir` atomically; return what was written.

    `entries`: TensorEntry list for the blob; `model_config`: train.model.ModelConfig fields;
    `eval_defaults`: e.g. {"seq_len": 1024}; `ship_modules`: [(source path, relative destination)]
    of the project modules run.py needs; `info`: extra JSON-able facts for submission.json
    (recipe, checkpoint hash, figures: keep them deterministic). Returns {"out_dir", "compact",
    "files": [{"path", "bytes", "sha256"}], "blob_bytes", "shipped_bytes"}."""
    out_dir = Path(out_dir)
    files = plan_files(entries, model_config, eval_defaults, ship_modules, compact)
    listing = [{"path": rel, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for rel, b in files.items()]
    record = {"format": FORMAT, "version": FORMAT_VERSION, "compact": bool(compact), "entry": ENTRY,
              "files": listing, **(info or {})}
    try:
        marker = _json_bytes(record, indent=1)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"submission info is not plain JSON: {e}") from None
    check_out_dir(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    except OSError as e:
        raise ArtifactError(f"{out_dir}: cannot create the submission folder: {e.strerror or e}") from None
    try:
        _write_tree(tmp, {**files, MARKER: marker})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a submission folder is not
        _swap_into_place(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ArtifactError(f"{out_dir}: cannot write the submission: {e.strerror or e}") from None
        raise
    return {"out_dir": str(out_dir), "compact": bool(compact), "files": listing,
            "blob_bytes": len(files[BLOB]), "shipped_bytes": sum(len(b) for b in files.values())}
