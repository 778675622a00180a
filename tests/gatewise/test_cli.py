"""The command line, driven in process (Typer's runner) and as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gatewise.cli import app

runner = CliRunner()


def test_help_lists_commands_without_importing_the_ml_stack():
    code = "import sys; from gatewise.cli import app; bad = [m for m in ('duckdb', 'pyarrow', 'mlflow', 'feast', 'numpy') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("simulate", "ingest", "telemetry", "demo"):
        assert cmd in res.output


def test_ingest_prints_counts_that_add_up(env, shared_data):
    log = shared_data / "logs" / "apache_combined.log"
    res = runner.invoke(app, ["ingest", "--format", "combined", str(log)])
    assert res.exit_code == 0, res.output
    counts = {
        k: int(v)
        for k, v in (
            line.split()
            for line in res.output.splitlines()
            if line.split()[:1] in (["accepted"], ["rejected"], ["duplicate"])
        )
    }
    assert counts == {"accepted": 9999, "rejected": 1, "duplicate": 0}
    res = runner.invoke(app, ["ingest", "-f", "combined", str(log)])
    assert "accepted 0" in res.output and "duplicate 9999" in res.output


def test_emit_formats_are_the_emitters():
    from gatewise.cli import FORMATS
    from telemetry.ingest.emit import EMITTERS

    assert set(FORMATS) == set(EMITTERS)


def test_ingest_auto_detects_and_a_wrong_format_fails_loudly(env):
    from tests.conftest import FIXTURES

    main = FIXTURES / "logs" / "nginx" / "main.log"
    res = runner.invoke(app, ["ingest", str(main)])  # --format auto
    assert res.exit_code == 0, res.output
    assert "format: nginx:main (100% of 61 sampled records parse" in " ".join(res.output.split())
    res = runner.invoke(app, ["ingest", "--format", "combined", str(main)])
    assert res.exit_code == 1  # every record rejected: not a silent 0
    out = " ".join(res.output.split())
    assert "61 × does not match the combined format" in out
    assert "61 of 61 records rejected" in out and "try --format nginx:main" in out
    env.mkdir(parents=True, exist_ok=True)
    bad = env / "bad.log"
    bad.write_text("hello\nworld\n")
    res = runner.invoke(app, ["ingest", str(bad)])
    assert res.exit_code == 2 and "no known format parses most" in res.output
    res = runner.invoke(app, ["ingest", "--format", "apache:'%h %Z'", str(bad)])
    assert res.exit_code == 2 and "unknown directive %Z" in res.output


def test_ingest_reads_the_format_from_nginx_conf(env):
    from tests.conftest import FIXTURES

    logs = FIXTURES / "logs" / "nginx"
    args = ["ingest", "--nginx-conf", str(logs / "nginx.conf"), "--log-format", "api"]
    res = runner.invoke(app, [*args, str(logs / "api.log")])
    assert res.exit_code == 0, res.output
    assert "accepted 61" in res.output
    res = runner.invoke(
        app, ["ingest", "--nginx-conf", str(logs / "nginx.conf"), str(logs / "api.log")]
    )
    assert res.exit_code == 2 and "go together" in res.output


def test_ingest_follow_stops_when_idle(env, monkeypatch):
    from tests.conftest import FIXTURES

    monkeypatch.setenv("GATEWISE_STREAM__BACKEND", "memory")  # the stream inside the process

    env.mkdir(parents=True, exist_ok=True)
    log = env / "live.log"
    log.write_bytes((FIXTURES / "logs" / "haproxy" / "httplog.log").read_bytes())
    res = runner.invoke(app, ["ingest", "--follow", "--idle-exit", "0.5", str(log)])
    assert res.exit_code == 0, res.output
    assert "format: haproxy" in res.output
    assert "read 61: accepted 61, rejected 0, duplicate 0" in res.output
    res = runner.invoke(app, ["ingest", "--follow", "--idle-exit", "0.5", str(log)])
    assert "read 0" in res.output  # resumed at the checkpoint: nothing again


def test_simulate_then_summary(env):
    res = runner.invoke(
        app, ["simulate", "--clients", "50", "--days", "0.1", "--seed", "1", "--emit", "kong"]
    )
    assert res.exit_code == 0, res.output
    assert (env / "consumers.csv").exists() and list((env / "labels").glob("*.parquet"))
    emitted = list((env / "emitted").glob("*.kong.log"))
    assert emitted
    res = runner.invoke(app, ["telemetry", "summary"])
    assert res.exit_code == 0 and "busiest routes" in res.output
    # the emitted log ingests back as duplicates of what simulate stored
    res = runner.invoke(app, ["ingest", "-f", "kong", str(emitted[0])])
    assert "accepted 0" in res.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["ingest", "-f", "apache2", "x.log"], "unknown format 'apache2'"),
        (["ingest", "-f", "combined", "/nonexistent.log"], "no such file"),
        (["simulate", "--clients", "0"], "clients"),
        (["simulate", "--emit", "iis"], "unknown format 'iis'"),
        (["telemetry", "summary", "--since", "yesterday"], "--since"),
    ],
)
def test_bad_input_is_named(env, args, needle):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert needle in res.output


def test_invalid_config_exits_with_the_field(env, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("simulator:\n  days: -1\n")
    res = runner.invoke(app, ["config", "check", "--config", str(cfg)])
    assert res.exit_code == 2 and "simulator.days" in res.output


def test_automl_fit_names_a_bad_metric_and_a_missing_label(env, tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(200)))
    res = runner.invoke(
        app,
        [
            "automl",
            "fit",
            "--table",
            str(t),
            "--label",
            "y",
            "--metric",
            "rmse",
            "--budget",
            "5",
        ],
    )
    assert res.exit_code == 2 and "metric" in res.output
    res = runner.invoke(
        app, ["automl", "fit", "--table", str(t), "--label", "nope", "--budget", "5"]
    )
    assert res.exit_code == 2 and "--label: column 'nope'" in res.output
