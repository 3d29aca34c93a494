"""The package's shape: no import cycle (so modules import in any order), no code comparing task names,
one metrics module used by the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import side4video
from side4video.engine.recognition import RECOGNITION, Predictions
from side4video.engine.retrieval import RETRIEVAL
from side4video.models import PRESETS, TASKS

SRC = Path(side4video.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Import nodes that run (function bodies included), skipping ``if TYPE_CHECKING:`` blocks."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name and mods[t].name != "__init__.py"}
    return graph


def test_the_runtime_import_graph_has_no_cycle():
    graph = import_graph()
    assert "side4video.models" in graph["side4video.engine.config"]  # the graph sees real imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_every_module_imports_in_a_fresh_interpreter():
    # Without cycles any order works (previous test); this imports them all, task modules and the
    # engine before the models that name them.
    names = sorted((n for n in modules() if not n.endswith("__main__")), reverse=True)
    code = f"import importlib\nfor m in {names!r}:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_benchmark_scripts_import_only_names_the_package_has():
    # The scripts are run by hand (some only on a GPU): a moved function must not break them unnoticed.
    import importlib

    scripts = sorted((SRC.parents[1] / "benchmarks").glob("*.py"))
    assert scripts
    for script in scripts:
        for node in _runtime_imports(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("side4video"):
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{script.name}: {node.module} has no {missing}"


def test_no_code_compares_task_names():
    names = {task.name for task in TASKS.values()}
    offenders = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if names & set(constants):
                    offenders.append(f"{module}:{node.lineno}")
    assert offenders == []
    assert {p.task for p in PRESETS.values()} == {RECOGNITION, RETRIEVAL}


def test_the_engine_reports_accuracy_with_ties_against_the_model():
    # Constant scores: every class ties for first place, so nothing is a top-1 hit (a stable sort would
    # instead credit the samples of class 0).
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    preds = Predictions(np.arange(8), np.full((8, 4), 0.25), labels, [])
    loader = [{"bad": [], "label": torch.from_numpy(labels), "index": torch.arange(8),
               "video": torch.zeros(8, 1, 3, 1, 2, 2)}]

    class Constant(torch.nn.Module):
        def forward(self, video: torch.Tensor) -> torch.Tensor:
            return torch.zeros(video.shape[0], 4)

    from side4video.engine.config import make_config
    from side4video.engine.distributed import DistInfo

    metrics, results = RECOGNITION.evaluate(Constant(), loader, make_config(model="side4video-tiny"), DistInfo())
    np.testing.assert_allclose(results.probs, preds.probs)
    assert metrics["top1"] == 0.0
    assert metrics["top5"] == 100.0
    assert metrics == side4video.classification_metrics(preds.probs, labels)
