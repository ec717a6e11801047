"""The import direction of the packages (README "Layout"): nothing imports upward.

features  <- decision <- sim <- training
features  <- decision <- serving            (serving never imports training or sim)
nextbest (the command line) may import anything.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "features": {"features"},
    "decision": {"features", "decision"},
    "sim": {"features", "decision", "sim"},
    "training": {"features", "decision", "sim", "training"},
    "serving": {"features", "decision", "serving"},
}
PACKAGES = set(ALLOWED) | {"nextbest"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module this file imports, at any depth (function-level imports count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ALLOWED:  # a bare `import features` would shadow-import the folder, not the package
        return "bare:" + parts[0]
    if parts[0] == "nextbest" and len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    if parts[0] == "nextbest" and len(parts) > 1:
        return "nextbest"
    return None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downward(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            layer = _layer(module)
            if layer is None:
                continue
            if layer.startswith("bare:") or layer == "nextbest" or layer not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(bad)


def test_nothing_generic_is_installed_at_the_top_level(tmp_path):
    """The install maps the folders under ``nextbest.``: ``import features`` must not find ours."""
    import subprocess
    import sys

    code = ("import importlib.util, json, nextbest.features as f; "
            f"print(json.dumps([f.__file__] + [importlib.util.find_spec(n) is not None for n in {sorted(ALLOWED)!r}]))")
    # from another directory: `python -m pytest` puts the repository itself on sys.path
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    found = __import__("json").loads(out.stdout)
    assert Path(found[0]).parent == ROOT / "features"
    assert not any(found[1:]), dict(zip(sorted(ALLOWED), found[1:]))


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: a decision module importing training is reported."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from nextbest.training.models import ResponseClassifier\n")
    layers = {_layer(m) for _, m in _imports(f)}
    assert "training" in layers and "training" not in ALLOWED["decision"]
