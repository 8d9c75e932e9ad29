"""Code shape: a lower layer never imports a higher one, no module uses another's private names, train.py is
the loop only."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "orchestra_jax"
# model < text < data < envs < rl < (train, sft, evaluate, ... at the top); parallel and analysis sit beside:
# parallel may import model (shapes of the params), never rl / envs / the top.
LOWER_MAY_NOT_IMPORT = {
    "model": ("data", "envs", "rl", "parallel", "analysis", "train", "sft", "evaluate", "prepare"),
    "text": ("data", "envs", "rl", "parallel", "analysis", "train", "sft", "evaluate", "prepare"),
    "data": ("envs", "rl", "parallel", "analysis", "train", "sft", "evaluate", "prepare"),
    "envs": ("rl", "parallel", "train", "sft", "evaluate", "prepare"),
    "rl": ("train", "sft", "evaluate", "prepare", "analysis"),
    "parallel": ("rl", "envs", "train", "sft", "evaluate", "prepare", "analysis"),
}
# Private names of libraries (jax's jit cache size, omegaconf nodes, NamedTuple._asdict is public API).
LIBRARY_PRIVATES = {"_cache_size", "_asdict", "_get_node", "_set_flag", "_replace", "_fields", "_make"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def _imported(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orchestra_jax"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("orchestra_jax"):
                    yield a.name, []


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path, tree in _modules():
        layer = path.relative_to(PKG).parts[0].removesuffix(".py")
        for module, _ in _imported(tree):
            parts = module.split(".")
            if len(parts) > 1 and parts[1] in LOWER_MAY_NOT_IMPORT.get(layer, ()):
                bad.append(f"{path.relative_to(PKG)} imports {module}")
    assert not bad, bad


def test_no_module_uses_another_modules_private_names():
    own_privates = set()
    for _, tree in _modules():
        own_privates |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                         and n.name.startswith("_") and not n.name.startswith("__")}
    bad = []
    for path, tree in _modules():
        for module, names in _imported(tree):
            bad += [f"{path.relative_to(PKG)}: from {module} import {n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) \
                    and node.attr not in LIBRARY_PRIVATES and node.attr in own_privates:
                bad.append(f"{path.relative_to(PKG)}:{node.lineno}: .{node.attr}")
    assert not bad, bad


def test_train_py_is_the_loop_only():
    assert len((PKG / "train.py").read_text().splitlines()) < 250
