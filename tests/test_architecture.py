"""The shape of the code, checked: imports flow one way through declared layers (so no cycle
can form, not even through an import inside a function), and every DVC stage depends on
exactly the project files its script runs, so `dvc status` sees any change to them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from rakuten_classifier.config import PIPELINE_PARAMS

PACKAGE = "rakuten_classifier"
SOURCE = REPO / "src" / PACKAGE
STAGES = REPO / "stages"

# Lowest first. A module may import only modules of lower layers (docs/architecture.md).
LAYERS: list[set[str]] = [
    {"config", "files", "reproducible", "store", "hashed_tokens"},
    {
        "calibration",
        "labels",
        "preprocess",
        "torch_reader",
        "download",
        "training",
        "litert",
        "char_ngrams",
        "word_ngrams",
        "svm_solver",
        "profiling",
        "cluster",
    },
    {
        "word_vectors",
        "sentence_encoder",
        "linear_svm",
        "data",
        "metrics",
        "fusion",
        "efficientnet_lite",
        "store.schema",
    },
    {"drift_stats", "drift_profile", "feedback_data"},
    {
        "raw_import",
        "dataset",
        "text",
        "image",
        "report",
        "store.database",
        "store.queries",
        "traffic",
    },
    {"recipes", "bundle", "store.writer", "cluster_features"},
    {"reference", "drift", "online_report", "cluster_predict"},
    {"drift_report", "feedback_export"},
    {"exporter"},
    {"evaluate", "pyfunc", "serve.errors", "serve.settings"},
    {
        "registry",
        "pyfunc_model",
        "serve.security",
        "serve.inputs",
        "serve.schemas",
        "serve.telemetry",
    },
    {"serve.recording", "serve.predictor"},
    {"promotion"},
    {"serve.models"},
    {"serve.service"},
    {"serve.routes"},
    {"serve.app"},
    {"serve"},
    {"cli_production"},
    {"cli_monitoring"},
    {"cli_retraining"},
    {"cli"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the package; Alembic's migration scripts are run by Alembic, not
    imported, and are left out."""
    return {
        module_name(path): path
        for path in sorted(SOURCE.rglob("*.py"))
        if "migrations" not in path.relative_to(SOURCE).parts
    }


def imported_modules(path: Path, known: set[str], local: set[str] = frozenset()) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside a function), plus the
    names of `local` modules (a stage script's own helpers) it imports."""
    found: set[str] = set()
    package = module_name(path).rpartition(".")[0] if path.is_relative_to(SOURCE) else ""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside the package
                base = ".".join(filter(None, [PACKAGE, package, base]))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in local:
                found.add(name)
            inner = name.removeprefix(f"{PACKAGE}.")
            if name.startswith(f"{PACKAGE}.") and inner in known:
                found.add(inner)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules) - {""}
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    declared = set().union(*LAYERS)
    missing = sorted(set(import_graph()) - declared - {""})
    assert not missing, f"modules without a layer in LAYERS (and docs/architecture.md): {missing}"


def test_no_module_imports_a_higher_or_equal_layer() -> None:
    layer_of = {name: number for number, names in enumerate(LAYERS) for name in names}
    wrong = [
        f"{module} (layer {layer_of[module]}) imports {target} (layer {layer_of[target]})"
        for module, targets in import_graph().items()
        if module in layer_of
        for target in sorted(targets)
        if target in layer_of and layer_of[target] >= layer_of[module]
    ]
    assert not wrong, "imports that do not go down a layer:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def stage_closure(script: Path) -> set[str]:
    """Every project file running the stage script loads: the script, its helpers in stages/,
    and the package modules it imports, directly or through other modules."""
    modules = project_modules()
    known = set(modules) - {""}
    local = {path.stem for path in STAGES.glob("_*.py")}
    files: set[str] = set()
    pending = [script]
    seen_modules: set[str] = set()
    while pending:
        path = pending.pop()
        files.add(path.relative_to(REPO).as_posix())
        for name in imported_modules(path, known, local):
            if name in local:
                pending.append(STAGES / f"{name}.py")
                continue
            # Importing a.b runs a/__init__.py first.
            parts = name.split(".")
            for depth in range(len(parts) + 1):
                parent = ".".join(parts[:depth])
                if parent not in seen_modules:
                    seen_modules.add(parent)
                    pending.append(modules[parent])
    return files


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_depends_on_every_project_file_it_runs(stage: str) -> None:
    spec = dvc_stages()[stage]
    script = REPO / spec["cmd"].split()[-1]
    needed = stage_closure(script)
    listed = {dep for dep in spec["deps"] if dep.endswith(".py")}
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing, f"dvc.yaml stage '{stage}' misses deps it runs: {missing}"
    assert not extra, f"dvc.yaml stage '{stage}' lists deps it does not run: {extra}"


def test_the_closure_follows_imports_inside_functions(tmp_path: Path) -> None:
    """A module imported only inside a function still counts: editing it must rerun the stage."""
    script = STAGES / "train_text.py"
    closure = stage_closure(script)
    assert "src/rakuten_classifier/calibration.py" in closure  # through text.py
    assert "stages/_environment.py" in closure
    assert "src/rakuten_classifier/__init__.py" in closure


def test_the_predict_stage_depends_on_every_params_section_the_bundle_records() -> None:
    """A change to any section the manifest copies must rerun predict, or the bundle would
    describe params it was not built with."""
    assert dvc_stages()["predict"]["params"] == list(PIPELINE_PARAMS)
