"""A bundle of project sources: the top-level definitions some entry points reach, and nothing else.

`bundle(roots)` starts from named top-level definitions (`{"artifact.export_entry": ["pack"]}`)
and follows every name they read: inside their module, through `from artifact.x import y`, and
through `mod.attr` of an imported project module. A top-level statement is kept when it defines
a needed name (a function or class is kept whole, its body's names followed in turn); module-level
statements that define nothing (`from __future__`, bare calls) are kept with their module. The
project imports are rewritten as relative imports of ONE flat package (`from artifact.runtime.
decoder import x` → `from .decoder import x`), so the bundle runs under any package name, and
each module is minified (`submission.minify_source`). In modules with `from __future__ import
annotations` the annotations are inert strings: they are dropped (a dataclass field keeps a
placeholder), and so are the imports only they used.

Every kept module is then checked: each global name it reads (found by `symtable`) is defined in
the module or a builtin, and every name taken from a sibling module is defined there — a pruned
definition can never surface later as a NameError on a path no test ran.
"""

from __future__ import annotations

import ast
import builtins
import symtable
from dataclasses import dataclass, field
from pathlib import Path

from artifact.runtime.errors import ConfigError
from artifact.submission import minify_source

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("artifact", "train", "analysis")
MODULE_NAMES = set(dir(builtins)) | {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__"}


class BundleError(ConfigError):
    """The sources cannot be bundled (an unsupported import, a name defined nowhere)."""


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def _module_file(module: str, root: Path) -> Path:
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@dataclass
class _Statement:
    node: ast.stmt
    defines: set[str]  # top-level names it binds
    names: set[str] = field(default_factory=set)  # names it reads
    attrs: set[tuple[str, str]] = field(default_factory=set)  # (name, attribute) it reads


@dataclass
class _Module:
    name: str
    statements: list[_Statement]
    links: dict[str, tuple[str, str | None]]  # local name -> (project module, name there; None: the module)
    defined: set[str]


class _Reads(ast.NodeVisitor):
    """Names a statement reads, with `name.attr` reads kept apart (a module alias's attribute)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.attrs: set[tuple[str, str]] = set()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and isinstance(node.value.ctx, ast.Load):
            self.attrs.add((node.value.id, node.attr))
        else:
            self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, (ast.Load, ast.Del)):
            self.names.add(node.id)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _bound_names(target: ast.AST) -> set[str]:
    """Top-level names an assignment target binds (`x`, `a, b`; `x[i] = …` and `x.y = …` count
    as part of x's definition)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_bound_names(e) for e in target.elts))
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    if isinstance(target, (ast.Subscript, ast.Attribute)):
        return _bound_names(target.value)
    return set()


class _DropAnnotations(ast.NodeTransformer):
    """Annotations off functions; a class or module variable keeps a `0` placeholder (a
    dataclass field needs one), unless it names ClassVar/InitVar, which dataclasses read."""

    def visit_FunctionDef(self, node):
        node.returns = None
        a = node.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            arg.annotation = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node):
        text = ast.unparse(node.annotation)
        if "ClassVar" not in text and "InitVar" not in text:
            node.annotation = ast.Constant(0)
        return self.generic_visit(node)


def _has_lazy_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
               any(a.name == "annotations" for a in n.names) for n in tree.body)


def _read_module(name: str, source: str, root: Path) -> _Module:
    tree = ast.parse(source, name)
    if _has_lazy_annotations(tree):
        tree = _DropAnnotations().visit(tree)
    is_package = _module_file(name, root).name == "__init__.py"
    links: dict[str, tuple[str, str | None]] = {}
    statements = []
    for node in tree.body:
        for inner in ast.walk(node):
            if inner is not node and isinstance(inner, (ast.Import, ast.ImportFrom)):
                target = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                if isinstance(inner, ast.ImportFrom) and inner.level or _is_project(target or ""):
                    raise BundleError(f"{name}: line {inner.lineno}: a project import inside a function "
                                      "cannot be bundled")
        if isinstance(node, ast.ImportFrom):
            module = _absolute(name, node, is_package)
            defines = {a.asname or a.name for a in node.names}
            if _is_project(module):
                for a in node.names:
                    sub = f"{module}.{a.name}"
                    is_module = _module_file(sub, root).is_file() or (root / Path(*sub.split("."))).is_dir()
                    links[a.asname or a.name] = (sub, None) if is_module else (module, a.name)
            statements.append(_Statement(node, defines if module != "__future__" else set()))
            continue
        if isinstance(node, ast.Import):
            if any(_is_project(a.name) for a in node.names):
                raise BundleError(f"{name}: line {node.lineno}: write project imports as `from … import …`")
            statements.append(_Statement(node, {a.asname or a.name.split(".")[0] for a in node.names}))
            continue
        reads = _Reads()
        reads.visit(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defines = {node.name}
        elif isinstance(node, ast.Assign):
            defines = set().union(*(_bound_names(t) for t in node.targets))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            defines = _bound_names(node.target)
        else:  # a bare expression or a compound statement: kept with its module
            defines = set()
        statements.append(_Statement(node, defines, reads.names, reads.attrs))
    defined = set().union(*(s.defines for s in statements)) if statements else set()
    return _Module(name, statements, links, defined)


class _Closure:
    """Walks the needed (module, name) pairs and records which statements (and which import
    aliases) are kept."""

    def __init__(self, sources: dict[str, str], root: Path):
        self.sources, self.root = sources, root
        self.modules: dict[str, _Module] = {}
        self.kept: dict[str, dict[int, set[str] | None]] = {}  # module -> statement index -> aliases kept
        self.todo: list[tuple[str, str]] = []
        self.seen: set[tuple[str, str]] = set()

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            source = self.sources.get(name)
            if source is None:
                path = _module_file(name, self.root)
                try:
                    source = path.read_text(encoding="utf-8")
                except OSError as e:
                    raise BundleError(f"cannot read module {name} ({path}): {e.strerror or e}") from None
            m = self.modules[name] = _read_module(name, source, self.root)
            self.kept[name] = {}
            for i, s in enumerate(m.statements):
                if not s.defines:  # __future__ imports, bare statements: they come with the module
                    self._keep(m, i, None)
        return self.modules[name]

    def need(self, module: str, name: str) -> None:
        self.todo.append((module, name))

    def run(self) -> None:
        while self.todo:
            pair = self.todo.pop()
            if pair in self.seen:
                continue
            self.seen.add(pair)
            module, name = pair
            m = self.module(module)
            found = [i for i, s in enumerate(m.statements) if name in s.defines]
            if not found:
                if name in MODULE_NAMES:
                    continue
                raise BundleError(f"{module}: {name!r} is used but defined nowhere in it")
            for i in found:
                self._keep(m, i, name)

    def _keep(self, m: _Module, i: int, name: str | None) -> None:
        s = m.statements[i]
        kept = self.kept[m.name]
        if isinstance(s.node, (ast.Import, ast.ImportFrom)) and name is not None:
            aliases = kept.get(i)
            if i in kept and aliases is None:
                return
            kept[i] = (aliases or set()) | {name}
            if name in m.links:
                target, there = m.links[name]
                if there is None:
                    self.module(target)  # an imported module: its attributes are needed as read
                else:
                    self.need(target, there)
            return
        if i in kept:
            return
        kept[i] = None
        for n in s.names:
            self._read(m, n, None)
        for n, attr in s.attrs:
            self._read(m, n, attr)

    def _read(self, m: _Module, name: str, attr: str | None) -> None:
        if name not in m.defined:
            return  # a builtin or a local name
        self.need(m.name, name)
        link = m.links.get(name)
        if link is not None and link[1] is None:  # a module alias
            target = self.module(link[0])
            if attr is not None:
                self.need(target.name, attr)
            else:  # the module object itself escapes: keep all of it
                for d in target.defined:
                    self.need(target.name, d)


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _rewrite_import(node: ast.stmt, m: _Module, aliases: set[str] | None) -> list[ast.stmt]:
    """An import statement cut to the kept aliases, project imports made relative to the flat
    package."""
    names = [a for a in node.names if aliases is None or (a.asname or a.name.split(".")[0]) in aliases]
    if isinstance(node, ast.Import):
        return [ast.Import(names=names)] if names else []
    groups: dict[str | None, list[ast.alias]] = {}  # sibling module (None: `from . import m`) -> names
    plain = []
    for a in names:
        local = a.asname or a.name
        link = m.links.get(local)
        if link is None:
            plain.append(a)
        elif link[1] is None:
            groups.setdefault(None, []).append(ast.alias(_short(link[0]), _alias(local, _short(link[0]))))
        else:
            groups.setdefault(_short(link[0]), []).append(ast.alias(link[1], _alias(local, link[1])))
    out: list[ast.stmt] = [ast.ImportFrom(module=node.module, names=plain, level=node.level)] if plain else []
    return out + [ast.ImportFrom(module=mod, names=aliases, level=1) for mod, aliases in groups.items()]


def _alias(local: str, name: str) -> str | None:
    return None if local == name else local


def _emit(m: _Module, kept: dict[int, set[str] | None]) -> str:
    body: list[ast.stmt] = []
    for i, s in enumerate(m.statements):
        if i not in kept:
            continue
        if isinstance(s.node, (ast.Import, ast.ImportFrom)):
            body += _rewrite_import(s.node, m, kept[i])
        else:
            body.append(s.node)
    tree = ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))
    return minify_source(ast.unparse(tree), _short(m.name))


def _globals_read(table: symtable.SymbolTable) -> set[str]:
    """Global names read anywhere in a module's symbol table (module level: names read but never
    bound there)."""
    out = set()
    for s in table.get_symbols():
        if table.get_type() == "module":
            if s.is_referenced() and not (s.is_assigned() or s.is_imported()):
                out.add(s.get_name())
        elif s.is_global() and s.is_referenced():
            out.add(s.get_name())
    for child in table.get_children():
        out |= _globals_read(child)
    return out


def _top_level_names(source: str) -> set[str]:
    table = symtable.symtable(source, "<bundle>", "exec")
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


def check_bundle(files: dict[str, str]) -> None:
    """Every global a bundled module reads is defined in it or a builtin, and every name it takes
    from a sibling (`from .x import y`, `x.y` of `from . import x`) is defined there."""
    defined = {name: _top_level_names(src) for name, src in files.items()}
    for name, src in files.items():
        missing = _globals_read(symtable.symtable(src, name, "exec")) - defined[name] - MODULE_NAMES
        if missing:
            raise BundleError(f"bundled module {name} reads undefined names {sorted(missing)}")
        tree = ast.parse(src, name)
        siblings = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for a in node.names:
                    if node.module is None:
                        siblings[a.asname or a.name] = a.name
                    elif node.module not in files or a.name not in defined[node.module]:
                        raise BundleError(f"bundled module {name} imports {a.name} from .{node.module}, "
                                          "which the bundle does not define")
        reads = _Reads()
        reads.visit(tree)
        for alias, attr in reads.attrs:
            target = siblings.get(alias)
            if target is not None and (target not in files or attr not in defined[target]):
                raise BundleError(f"bundled module {name} reads {alias}.{attr}, which the bundle does not define")


def bundle(roots: dict[str, list[str]], sources: dict[str, str] | None = None,
           root: Path = PROJECT_ROOT) -> dict[str, str]:
    """{short module name: minified source} of everything `roots` ({project module: [top-level
    names]}) reach; `sources` replaces the text of any module (e.g. one with a value baked in).
    Module names must stay unique once flattened to their last component."""
    walk = _Closure(dict(sources or {}), root)
    for module, names in roots.items():
        walk.module(module)
        for n in names:
            walk.need(module, n)
    walk.run()
    files: dict[str, str] = {}
    owners: dict[str, str] = {}
    for name in sorted(walk.modules):
        short = _short(name)
        if short in owners:
            raise BundleError(f"modules {owners[short]} and {name} would share the name {short!r} in the bundle")
        owners[short] = name
        if walk.kept[name]:
            files[short] = _emit(walk.modules[name], walk.kept[name])
    check_bundle(files)
    return files
