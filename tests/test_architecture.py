"""The design's facts, checked on the source: the core's layers and their imports (every import,
those inside functions included), where a method's words may appear, where Ray may be imported,
how long a module may grow; and that a new method is one file plus one line in the method table."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffseg import config, losses
from diffseg.config import spec
from diffseg.errors import ConfigError
from diffseg.loop import fit
from diffseg.methods import METHODS, Method, Stage, register, unregister
from diffseg.nets import build_segmenter

from factories import tiny

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("diffseg", "tune", "experiments")
# the core's layers, bottom first: a module may import its own layer and the ones below
LAYERS = [
    {"errors", "schema", "durable", "config", "intervals", "blocks", "nets", "fused", "timm_unet", "xnet_unet", "diffusion",
     "losses", "metrics",
     "checkpoint", "runtime"},
    {"data"},
    {"methods"},
    {"evaluate", "readout", "kept", "rundir", "visuals", "run_state", "selection", "loop", "bench", "predict",
     "datainfo"},
    {"cli", "__main__", "__init__"},
]
MAX_LINES = 350


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, at any depth of its code; relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from . import x` imports module x; `from .m import f` imports module m
            subs = {f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}", root)}
            found |= subs or {base}
    return found


def is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def core_graph() -> dict[str, set[str]]:
    paths = sources("diffseg")
    modules = {module_name(p) for p in paths}
    return {module_name(p): {m for m in imports(p) if m in modules and m != module_name(p)} for p in paths}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_the_core_has_no_import_cycle():
    graph, state, cycles = core_graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing its own submodules is how a package is made, not a cycle
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, real


def test_no_module_imports_a_higher_layer():
    every = set().union(*LAYERS)
    graph = core_graph()
    unplaced = sorted(m for m in graph if m != "diffseg" and m.split(".")[1] not in every)
    assert not unplaced, f"modules in no layer: {unplaced}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if layer(b) > layer(a) and not (a == "diffseg.data" and b.startswith("diffseg.data.")))
    assert not upward, upward


def test_a_methods_words_stay_in_the_methods():
    words = ("teacher", "student", "DiffusionSegmenter")
    methods = ROOT / "diffseg" / "methods"
    found = [f"{p.relative_to(ROOT)}: {w}" for p in sources(*PACKAGES) if methods not in p.parents
             for w in words if w in p.read_text()]
    assert not found, found


def test_ray_is_imported_only_in_tune():
    found = [str(p.relative_to(ROOT)) for p in sources("diffseg", "experiments")
             if any(m == "ray" or m.startswith("ray.") for m in imports(p))]
    assert not found, found


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in sources(*PACKAGES, "tests")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The walker finds imports hidden in functions and resolves relative ones."""
    mod = ROOT / "diffseg" / "nets.py"
    assert "diffseg.blocks" in imports(mod)
    fake = tmp_path / "diffseg" / "data"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from ..loop import fit\n")
    found = imports(fake / "x.py", tmp_path)
    assert "diffseg.loop" in found and layer("diffseg.loop") > layer("diffseg.data.x")


# ------------------------------------------------------------------ a method is a file and a line
@dataclass(frozen=True)
class ToySettings:
    weight: float = spec(1.0, low=0.0)  # of its only loss term


class Toy(Method):
    """Labeled-only training with a weighted loss: the smallest method with a section of its own."""
    name = "toy"
    stages = (Stage("fit", "train", inputs=("labeled",), optimizers=("net",)),)
    predictors = ("net",)
    sections = {"toy": ToySettings}

    def build_networks(self):
        return {"net": build_segmenter(self.cfg.model, self.channels, self.dims)}

    def build_optimizers(self):
        return {"net": self.optimizer(["net"], "train")}

    def loss(self, stage, batch, step):
        loss = self.cfg.toy.weight * losses.dice_ce(self.scores("net", batch["labeled"]["image"]),
                                                    batch["labeled"]["mask"])
        return loss, {"loss": float(loss.detach())}


@pytest.fixture
def toy_method():
    register(Toy)
    yield Toy
    unregister("toy")


def test_a_method_registered_from_a_test_trains_with_its_own_section(toy_method, tmp_path):
    cfg = tiny(method="toy", **{"toy.weight": 0.5})
    assert cfg.toy.weight == 0.5 and "toy" in METHODS
    with pytest.raises(ConfigError, match="'toy.weight' must be >= 0"):
        config.apply_overrides(cfg, {"toy.weight": -1})
    summary = fit(cfg, tmp_path / "run", log=lambda m: None)
    assert summary["status"] == "complete" and summary["method"] == "toy"
    assert summary["selected"]["predictor"] == "net" and 0 <= summary["test"]["dice"] <= 1
    stages = {r.get("stage") for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())}
    assert stages == {"fit", "final"}  # the method's own stage name, read from its Stage


def test_an_unregistered_method_takes_its_section_with_it(toy_method):
    unregister("toy")
    register(toy_method)  # the fixture unregisters it again
    unregister("toy")
    with pytest.raises(ConfigError, match="unknown config key 'toy'"):
        config.load("debug", {"toy.weight": 1})
    with pytest.raises(ConfigError, match="'method' = 'toy'"):
        config.load("debug", {"method": "toy"})
    register(toy_method)
