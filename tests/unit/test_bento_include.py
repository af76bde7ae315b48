"""What ``bentofile.yaml`` ships in every Bento: every module serving imports, and of ``training/``
nothing else (no CLI, Airflow launcher, image builder or training step in a serving image).

The imports are followed statically from ``bentos/`` (module level and inside functions, which is
where the service imports most of ``training``; ``if TYPE_CHECKING:`` blocks never run and are left
out), and the bentofile's patterns are matched with BentoML's own matcher, as ``bentoml build`` does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from bentoml._internal.bento.build_config import BentoPathSpec

ROOT = Path(__file__).resolve().parents[2]
# The packages of this repository that a Bento can carry; any other import is an installed package.
LOCAL_PACKAGES = ("bentos", "training", "driftloop_grpc")
# Modules that must never ship: what users run on their machine or in Airflow, not in the service.
NEVER_SHIPPED = (
    "training/cli/__init__.py",
    "training/airflow_local.py",
    "training/retrain.py",
    "training/release/__init__.py",
    "training/release/containerize.py",
    "dags/retrain.py",
)


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module ``path`` may import at run time, and ``module.name`` for each ``from`` import
    (a submodule or an attribute: which one is settled by looking for the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
            else:
                visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        else:
            visit(node)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


def serving_closure() -> set[str]:
    """The repository's files that importing every module under ``bentos/`` can load."""
    todo = [f"bentos.{path.stem}" for path in (ROOT / "bentos").glob("*.py")]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in LOCAL_PACKAGES:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imported_names(path, name)
    return {str(path.relative_to(ROOT)) for path in seen.values()}


@pytest.fixture(scope="module")
def shipped() -> BentoPathSpec:
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    return BentoPathSpec(
        include=config.get("include") or ["*"],
        exclude=config.get("exclude") or [],
        ctx_dir=str(ROOT),
    )


def test_the_import_scan_follows_imports_inside_functions() -> None:
    """The service imports ``training.scoring`` inside a method only: a scan of module-level
    imports alone would miss it and let the test pass on a Bento that cannot serve."""
    closure = serving_closure()
    assert {"bentos/service.py", "training/scoring.py", "training/store.py"} <= closure
    assert "training/settings.py" in closure
    assert not any(path.startswith(("training/cli/", "dags/")) for path in closure)


def test_every_module_serving_imports_ships_in_the_bento(shipped: BentoPathSpec) -> None:
    missing = sorted(path for path in serving_closure() if not shipped.includes(path))
    assert not missing, f"bentofile.yaml's include: lacks {missing}, which serving imports"


def test_the_store_migrations_ship_in_the_bento(shipped: BentoPathSpec) -> None:
    """The service applies them before serving (``training.postgres.ensure_database``)."""
    migrations = sorted((ROOT / "training" / "migrations").glob("*.sql"))
    assert migrations
    for path in migrations:
        assert shipped.includes(str(path.relative_to(ROOT))), path.name


@pytest.mark.parametrize("path", NEVER_SHIPPED)
def test_the_cli_airflow_and_image_builder_stay_out(shipped: BentoPathSpec, path: str) -> None:
    assert (ROOT / path).is_file(), f"{path} moved: update NEVER_SHIPPED"
    assert not shipped.includes(path)


def test_no_training_module_ships_that_serving_does_not_import(shipped: BentoPathSpec) -> None:
    closure = serving_closure()
    extra = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "training").rglob("*.py")
        if shipped.includes(str(path.relative_to(ROOT)))
        and str(path.relative_to(ROOT)) not in closure
    )
    assert not extra, f"bentofile.yaml ships {extra}, which serving never imports"
