"""The house holds itself up: DESIGN.md's room table, as import-linter contracts in
pyproject.toml, is kept, has no ignored imports, and breaks when someone imports upward."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_contracts_are_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_no_contract_ignores_imports():
    for c in _config()["contracts"]:
        assert not c.get("ignore_imports"), f"contract {c['id']} ignores imports"


def test_every_room_is_a_layer():
    rooms = sorted(
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").exists() and p.name not in ("tests", "benchmarks")
    )
    (layers,) = [c["layers"] for c in _config()["contracts"] if c["type"] == "layers"]
    named = sorted(n.strip() for layer in layers for n in layer.split("|"))
    assert named == rooms
    assert sorted(_config()["root_packages"]) == rooms


def test_the_readers_contract_lists_every_other_module():
    """Analytics may reach models and gateway only through their readers: the forbidden
    list must name every other module of those rooms, including ones added later."""
    (c,) = [c for c in _config()["contracts"] if c["id"] == "readers"]
    allowed = {"models.tracking", "gateway.policy_store", "gateway.policy"}
    for room in ("models", "gateway"):
        modules = {
            f"{room}.{p.stem}"
            for p in (ROOT / room).iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
        }
        assert modules - allowed == {m for m in c["forbidden_modules"] if m.startswith(room)}


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("telemetry/store.py", "import gatewise.cli", "Rooms import down the loop"),
        ("config/settings.py", "import telemetry.schema", "Rooms import down the loop"),
        ("gateway/app.py", "import models.search", "Rooms import down the loop"),
        ("features/windows.py", "import demo.main", "Rooms import down the loop"),
        ("analytics/usage.py", "import models.registry", "through their rooms' readers"),
        ("gateway/scan.py", "import mlflow", "imports no training code"),
        ("telemetry/schema.py", "import feast", "knows nothing of features"),
    ],
)
def test_an_upward_import_breaks_the_check(tmp_path, module, line, contract):
    """A copy of the rooms with one import added that DESIGN.md forbids: the check fails
    and names the contract and the offending import."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    for room in _config()["root_packages"]:
        shutil.copytree(ROOT / room, copy / room, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    r = _lint(copy)
    assert r.returncode != 0
    broken = r.stdout[r.stdout.index(contract) :]
    assert "BROKEN" in broken.splitlines()[0] + broken.splitlines()[1]
    assert module.removesuffix(".py").replace("/", ".") in r.stdout
