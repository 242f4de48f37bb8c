"""The package tree is the architecture: imports go one way (docs/design.md, "Where things live").

core ← data ← ops ← report ← lens, tuned, probe, refine, dla, directions, concepts ← intervene, steer ← adapters, job ← cli:
a module may import its own subpackage and the ones below it, never one above (a data module never
imports the CLI), even inside a function; no module imports itself back through others (no import
cycle, lazy imports included); an analysis uses a sibling analysis only through the names its
package exports (`__all__`); a kernel module uses another kernel module's public names only.
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "fusedlens"
KERNELS = pathlib.Path(__file__).resolve().parents[1] / "kernels"
LEVEL = {"core": 0, "data": 1, "ops": 2, "report": 3,
         # the analyses
         "lens": 4, "tuned": 4, "probe": 4, "refine": 4, "dla": 4, "directions": 4, "concepts": 4,
         "intervene": 5,  # write hooks, patching
         "steer": 5,  # activation addition on intervene's edits (one way)
         "adapters": 6, "job": 6,
         "cli": 7}
ANALYSES = {name for name, level in LEVEL.items() if level in (4, 5)}
# fusedlens.kernels (top-level kernels/, installed into the package) and fusedlens._C (the C++ extension)
# are not under python/fusedlens in a checkout: neither imports the package back.
OUTSIDE = {"kernels", "_C"}


def internal_imports(path: pathlib.Path) -> set[str]:
    """The fusedlens subpackages a module imports (relative or absolute, at any depth of the file)."""
    sub = path.relative_to(PACKAGE).parts
    out = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(sub[:-1])[:len(sub) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts + [a.name] for a in node.names] if not parts else [parts]
            elif node.module and node.module.startswith("fusedlens."):
                names = [node.module.split(".")[1:]]
            else:
                continue
            out |= {p[0] for p in names if p and p[0] in LEVEL}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fusedlens.")
                    and a.name.split(".")[1] in LEVEL}
    return out


def test_every_subpackage_opens_with_what_it_owns():
    for name in LEVEL:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and len(doc) > 20, name


def test_every_subpackage_has_a_level():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {"kernels"}
    assert subpackages <= LEVEL.keys(), f"give {sorted(subpackages - LEVEL.keys())} a level in LEVEL"


def test_imports_go_one_way():
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) < 2 or rel[0] not in LEVEL:
            continue
        for target in internal_imports(path):
            assert LEVEL[target] <= LEVEL[rel[0]], f"{'/'.join(rel)} imports {target}, a level above it"
            if target != rel[0]:
                edges.setdefault(rel[0], set()).add(target)
    same_level = {a: {b for b in bs if LEVEL[b] == LEVEL[a]} for a, bs in edges.items()}
    for a, bs in same_level.items():  # siblings may lean on each other one way only
        for b in bs:
            assert a not in same_level.get(b, set()), f"{a} and {b} import each other"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    bad = PACKAGE / "data" / "windows.py"
    assert "cli" not in internal_imports(bad)
    fake = tmp_path / "python" / "fusedlens" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from ..cli import main\nfrom fusedlens.job.corpus_job import run_corpus\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "python" / "fusedlens")
    assert internal_imports(fake / "bad.py") == {"cli", "job"}


def test_the_checker_sees_a_lazy_import(tmp_path, monkeypatch):
    fake = tmp_path / "python" / "fusedlens" / "core"
    fake.mkdir(parents=True)
    (fake / "m.py").write_text("class A:\n    def f(self):\n        from ..adapters import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "python" / "fusedlens")
    assert internal_imports(fake / "m.py") == {"adapters"}


def _resolve(path: pathlib.Path, root: pathlib.Path, node: ast.ImportFrom | ast.Import) -> list[tuple[list[str], str]]:
    """(module path parts under root, imported name or "") of each thing an import statement names."""
    sub = list(path.relative_to(root).parts)
    out = []
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = sub[:-1][:len(sub) - node.level]
            parts = base + (node.module.split(".") if node.module else [])
        elif node.module and node.module.startswith(root.name + "."):
            parts = node.module.split(".")[1:]
        else:
            return []
        out += [(parts, a.name) for a in node.names]
    else:
        out += [(a.name.split(".")[1:], "") for a in node.names if a.name.startswith(root.name + ".")]
    return out


def _module_file(root: pathlib.Path, parts: list[str]) -> pathlib.Path | None:
    if (root.joinpath(*parts) / "__init__.py").exists():
        return root.joinpath(*parts) / "__init__.py"
    if parts and root.joinpath(*parts[:-1], parts[-1] + ".py").exists():
        return root.joinpath(*parts[:-1], parts[-1] + ".py")
    return None


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """module → the modules it imports, anywhere in the file (inside functions too), as paths under root."""
    graph = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] == "kernels":
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for parts, name in _resolve(path, root, node):
                if name in OUTSIDE and not parts:
                    continue  # built or installed from outside python/fusedlens: imports nothing back
                module = _module_file(root, parts + [name]) if name else None  # `from pkg import submodule`
                module = module or _module_file(root, parts)
                if module is not None and module != path:
                    targets.add(str(module.relative_to(root)))
        graph[str(rel)] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (its modules in order, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_even_lazy():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_lazy_cycle(tmp_path):
    root = tmp_path / "fusedlens"
    (root / "core").mkdir(parents=True)
    (root / "adapters").mkdir()
    for d in (root, root / "core", root / "adapters"):
        (d / "__init__.py").write_text("")
    (root / "core" / "models.py").write_text("def f():\n    from ..adapters.tl import g\n")
    (root / "adapters" / "tl.py").write_text("from ..core.models import f\n")
    assert find_cycle(import_graph(root)) == ["adapters/tl.py", "core/models.py", "adapters/tl.py"]
    (root / "core" / "models.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(root)) is None


def _exports(package: str) -> set[str]:
    """The names a package exports: its __init__'s __all__."""
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def sibling_reaches(path: pathlib.Path) -> list[str]:
    """Imports of a module of one analysis that reach into another analysis: a module inside it, or a name
    its package does not export."""
    own = path.relative_to(PACKAGE).parts[0]
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for parts, name in _resolve(path, PACKAGE, node):
            if not parts or parts[0] not in ANALYSES or parts[0] == own:
                continue
            if len(parts) > 1 or not name or name not in _exports(parts[0]):
                bad.append(".".join(parts) + (f".{name}" if name else ""))
    return bad


def test_every_exported_name_is_defined():
    """A package's __all__ names only what its __init__ imports or defines (a stale name breaks `import *`
    and the sibling check above)."""
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        bound = {a.asname or a.name for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
        bound |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        bound |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        missing = _exports(init.parent.name) - bound
        assert not missing, f"{init.parent.name}/__init__.py exports {sorted(missing)} but never binds them"


def unresolved_imports(path: pathlib.Path) -> list[str]:
    """The fusedlens names an import statement of the module asks for (lazy ones included) that do not exist:
    a name left behind by a rename fails here, not when a command first runs the function."""
    import importlib

    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for parts, name in _resolve(path, PACKAGE, node):
            if (parts or [name])[0] in OUTSIDE:
                continue  # Triton kernels and the C++ extension: checked by their own suites
            module = importlib.import_module(".".join(["fusedlens", *parts]))
            if name and not hasattr(module, name) and not (_module_file(PACKAGE, parts + [name])):
                bad.append(".".join(parts) + "." + name)
    return bad


def test_every_import_resolves_even_lazy():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if rel[0] != "kernels" and not rel[-1].startswith("_C"):
            assert not unresolved_imports(path), f"{'/'.join(rel)} imports missing {unresolved_imports(path)}"


def test_the_import_resolver_sees_a_stale_name(tmp_path):
    bad = PACKAGE / "cli" / "_stale_import_probe.py"
    bad.write_text("def main():\n    from ..concepts import concepts\n")
    try:
        assert unresolved_imports(bad) == ["concepts.concepts"]
    finally:
        bad.unlink()


def test_analyses_use_each_other_through_exports_only():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) > 1 and rel[0] in ANALYSES:
            assert not sibling_reaches(path), f"{'/'.join(rel)} reaches into {sibling_reaches(path)}"


def test_the_sibling_checker_sees_a_reach(tmp_path, monkeypatch):
    bad = PACKAGE / "directions" / "_fake_reach.py"
    try:
        bad.write_text("from ..probe.solve import cross_validate\nfrom ..probe import _private\n"
                       "from ..probe import RidgeAccumulator\nfrom ..core.models import LensModel\n")
        assert sibling_reaches(bad) == ["probe.solve.cross_validate", "probe._private"]
    finally:
        bad.unlink()


def kernel_private_imports(path: pathlib.Path) -> list[str]:
    """Private names (a leading underscore) a kernel module imports from another kernel module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fusedlens.kernels")):
            found += [a.name for a in node.names if a.name.startswith("_") and a.name != "__future__"
                      and node.module != "__future__"]
    return found


def test_kernels_share_public_names_only():
    for path in KERNELS.glob("*.py"):
        assert not kernel_private_imports(path), f"kernels/{path.name} imports {kernel_private_imports(path)}"


def test_the_kernel_checker_sees_a_private_import(tmp_path):
    bad = tmp_path / "k.py"
    bad.write_text("from .lens_stats import _tile_logits, tile_logits\nfrom fusedlens.kernels.x import _y\n")
    assert kernel_private_imports(bad) == ["_tile_logits", "_y"]


# Reading files the tool did not write happens in one place (core/files.py): nothing else unpickles,
# evaluates or trusts remote code, so a crafted file cannot run code through a new reader.
UNSAFE_CALLS = {"eval", "exec", "pickle.load", "pickle.loads", "torch.load", "marshal.loads", "yaml.load"}


def unsafe_calls(path: pathlib.Path) -> list[str]:
    """Calls in a module that can run code from a file's contents, and trust_remote_code=True anywhere."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else \
                f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            if name in UNSAFE_CALLS:
                found.append(name)
            for kw in node.keywords:
                if kw.arg == "trust_remote_code" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append("trust_remote_code")
                if name == "torch.load" and kw.arg == "weights_only" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is True):
                    found.append("torch.load without weights_only=True")
    return found


def test_no_module_but_core_files_reads_code_from_files():
    for path in PACKAGE.rglob("*.py"):
        rel = "/".join(path.relative_to(PACKAGE).parts)
        if "kernels" in rel:
            continue
        found = unsafe_calls(path)
        if rel == "core/files.py":
            assert found == ["torch.load"], found  # with weights_only=True, checked above
        else:
            assert not found, f"{rel} calls {found}: read files through core/files.py"


def test_the_unsafe_call_checker_sees_them(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, pickle\nx = torch.load(p, weights_only=False)\ny = pickle.loads(b)\nz = eval(s)\n"
                   "m = M.from_pretrained(p, trust_remote_code=True)\n")
    assert sorted(unsafe_calls(bad)) == sorted(["torch.load", "torch.load without weights_only=True", "pickle.loads",
                                                "eval", "trust_remote_code"])


def test_every_command_stamps_its_output_folder():
    """check_output_dir is given the command's name wherever a command writes (cli/ and the run job), so no
    command can write into (and mix its files with) another command's folder."""
    for path in list((PACKAGE / "cli").glob("*.py")) + [PACKAGE / "job" / "corpus_job.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_output_dir":
                assert len(node.args) == 3, f"{path.name}: check_output_dir without the command's name"


def test_every_result_class_is_viewable():
    """Every result a user gets back (the classes named ...Result, and the steering generation) has save_html and
    a notebook display through report.page.Viewable."""
    import importlib

    from fusedlens.report.page import Viewable

    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Result") or node.name == "SteerGeneration"):
                module = ".".join(("fusedlens",) + path.relative_to(PACKAGE).with_suffix("").parts)
                found.append(getattr(importlib.import_module(module), node.name))
    assert len(found) >= 12
    assert [c.__name__ for c in found if not issubclass(c, Viewable)] == []
