"""The package tree is the architecture: imports go one way (docs/design.md, "Where things live").

core ← data ← ops ← report ← lens, tuned, probe, refine, dla, directions, concepts ← intervene, steer ← adapters, run ← cli: a module may import its
own subpackage and the ones below it, never one above (a data module never imports the CLI),
and the subpackages on one level form no cycle. The one exception is named in LAZY_UPWARD: an
entry point a lower module reaches upward through inside a function, never at import time.
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "fusedlens"
LEVEL = {"core": 0, "data": 1, "ops": 2, "report": 3,
         # the analyses
         "lens": 4, "tuned": 4, "probe": 4, "refine": 4, "dla": 4, "directions": 4, "concepts": 4,
         "intervene": 5,  # write hooks, patching (uses dla's component capture)
         "steer": 5,  # activation addition on intervene's edits (one way)
         "adapters": 6, "run": 6,
         "cli": 7}
# (module, subpackage above it) it may import inside a function: LensModel.from_transformer_lens.
LAZY_UPWARD = {("core/models.py", "adapters")}


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """The nodes of a module outside any function body (what runs at import time)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo += [c for c in ast.iter_child_nodes(node) if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def internal_imports(path: pathlib.Path, *, import_time_only: bool = False) -> set[str]:
    """The fusedlens subpackages a module imports (relative or absolute, at any depth of the file;
    import_time_only: only those outside function bodies)."""
    sub = path.relative_to(PACKAGE).parts
    out = set()
    tree = ast.parse(path.read_text())
    for node in _module_level(tree) if import_time_only else ast.walk(tree):
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
        lazy_ok = {t for m, t in LAZY_UPWARD if m == "/".join(rel)}
        for target in internal_imports(path):
            if target in lazy_ok:
                assert target not in internal_imports(path, import_time_only=True), \
                    f"{'/'.join(rel)} imports {target} at import time; only inside a function is allowed"
                continue
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
    (fake / "bad.py").write_text("from ..cli import main\nfrom fusedlens.run.job import run\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "python" / "fusedlens")
    assert internal_imports(fake / "bad.py") == {"cli", "run"}


def test_the_lazy_exception_is_inside_a_function(tmp_path, monkeypatch):
    fake = tmp_path / "python" / "fusedlens" / "core"
    fake.mkdir(parents=True)
    (fake / "m.py").write_text("class A:\n    def f(self):\n        from ..adapters import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "python" / "fusedlens")
    assert internal_imports(fake / "m.py") == {"adapters"}
    assert internal_imports(fake / "m.py", import_time_only=True) == set()
    (fake / "m.py").write_text("from ..adapters import x\n")
    assert internal_imports(fake / "m.py", import_time_only=True) == {"adapters"}


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
    for path in list((PACKAGE / "cli").glob("*.py")) + [PACKAGE / "run" / "job.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_output_dir":
                assert len(node.args) == 3, f"{path.name}: check_output_dir without the command's name"
