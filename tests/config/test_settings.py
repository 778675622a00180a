from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("GATEWISE_"):
            monkeypatch.delenv(k)


def test_repo_config_is_valid():
    s = load_settings(REPO / "gatewise.yaml")
    assert s.data_dir == Path(".gatewise")
    assert s.simulator.scenarios.credential_stuffing > 0
    assert s.static_limits_per_minute["enterprise"] > s.static_limits_per_minute["free"]


def test_env_overrides_file_including_nested(monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWISE_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GATEWISE_SIMULATOR__CLIENTS", "123")
    s = load_settings(REPO / "gatewise.yaml")
    assert s.data_dir == tmp_path / "elsewhere"
    assert s.simulator.clients == 123
    assert s.simulator.days == 1  # the rest of the nested block still comes from the file


def test_missing_file_uses_defaults(tmp_path):
    s = load_settings(tmp_path / "absent.yaml")
    assert s.simulator.clients == 2000


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("simulator:\n  clients: -5\n", "simulator.clients"),
        ("simulator:\n  scenarios:\n    flood: 2\n", "simulator.scenarios.flood"),
        ("simulatr:\n  clients: 5\n", "simulatr"),
        ("static_limits_per_minute:\n  gold: 10\n", "static_limits_per_minute"),
        ("simulator:\n  skew:\n    column: shoe_size\n", "simulator.skew.column"),
        (
            "simulator:\n  scenarios: {credential_stuffing: .2, scraping: .2, flood: .2}\n",
            "simulator.scenarios",
        ),
    ],
)
def test_invalid_config_names_the_field(tmp_path, yaml_text, field):
    p = tmp_path / "gatewise.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_settings(p)
    assert field in str(exc.value)


def test_invalid_env_value_names_the_field(monkeypatch):
    monkeypatch.setenv("GATEWISE_SIMULATOR__DAYS", "lots")
    with pytest.raises(ConfigError, match=r"simulator\.days"):
        load_settings(REPO / "gatewise.yaml")


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    p = tmp_path / "gatewise.yaml"
    p.write_text("simulator: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(p)
