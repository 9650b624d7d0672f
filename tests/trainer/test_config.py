"""The run config: every problem is one line naming the key, and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datajobs import sources
from datajobs.errors import ConfigError
from tests.conftest import BIN, REPO, run_cli
from trainer import components
from trainer.config import load_config

PLANETS = REPO / "configs" / "planets.yaml"


# configs/ also holds a tune search space and a data-job config; each is checked by its own loader below.
NOT_RUN_CONFIGS = {"planets-space.yaml", "spectra-sim.yaml"}


def test_example_configs_validate() -> None:
    """Every run config in configs/ validates, its `model:` section included (by the component's own model)."""
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in paths} >= NOT_RUN_CONFIGS
    for path in paths:
        if path.name in NOT_RUN_CONFIGS:
            continue
        cfg = load_config(path)
        components.get(cfg.component)(cfg)


def test_the_data_job_config_in_configs_validates() -> None:
    raw = yaml.safe_load((REPO / "configs" / "spectra-sim.yaml").read_text())
    (name,) = raw
    module = sources.get(name)
    module.Config.model_validate(raw[name])


def test_overrides_keep_types() -> None:
    cfg = load_config(PLANETS, ["optim.lr=3e-4", "train.max_steps=7", "train.clip_grad_norm=null"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 7
    assert cfg.train.clip_grad_norm is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.max_stepz=5"], "unknown key 'train.max_stepz'"),
        (["train.max_steps=many"], "train.max_steps"),
        (["optim.lr=-1"], "optim.lr"),
        (["distributed.strategy=horovod"], "distributed.strategy"),
        (["nonsense=1"], "unknown key 'nonsense'"),
        (["optim.name=adamw8bit", "distributed.strategy=fsdp"], "adamw8bit"),
        (["logging.run_dir=gs://bucket/runs"], "a run folder is a local path or an s3:// URL"),
        (["logging.run_dir=s3://bucket/runs", "logging.tensorboard=true"], "an s3:// run_dir cannot take"),
        (["logging.run_dir=s3://bucket/runs", "distributed.strategy=deepspeed"], "DeepSpeed writes its checkpoints"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(PLANETS, overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/config.yaml")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "-c", "no/such.yaml"], "config file 'no/such.yaml' not found"),
        (["run", "-c", str(PLANETS), "--set", "train.bogus=1"], "unknown key 'train.bogus'"),
        (["validate", "-c", str(PLANETS), "--set", "model.hiden=3"], "unknown key 'model.hiden'"),
        (["run", "-c", str(PLANETS), "--set", "component=starship"], "unknown component 'starship'"),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(args: list[str], expected: str, tmp_path: Path) -> None:
    result = run_cli([str(BIN / "astrobio-train"), *args])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_validate_prints_resolved_config() -> None:
    result = run_cli([str(BIN / "astrobio-train"), "validate", "-c", str(PLANETS), "--set", "optim.lr=0.01"])
    assert result.returncode == 0, result.stderr
    assert "lr: 0.01" in result.stdout
