"""Settings: flags > env (HAMI_EXTENDER_*) > config file > defaults, with errors that say what to change."""

from __future__ import annotations

import pathlib

import pytest
from hami_scheduler_extender.app import cli
from hami_scheduler_extender.app.settings import PROGRAM, Settings
from hami_scheduler_extender.core.model import Policy
from hami_shared.config import ConfigError


def load(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return PROGRAM.load_settings(argv, environ or {})


def test_defaults_follow_hami() -> None:
    settings = load([])
    assert settings.listen == ("127.0.0.1", 8888)
    config = cli.extender_config(settings)
    assert config.node_policy is Policy.BINPACK
    assert config.gpu_policy is Policy.SPREAD
    assert config.names.count == "nvidia.com/gpu"
    assert config.defaults.default_gpu_num == 1


def test_precedence_flag_env_file(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "extender.yaml"
    config.write_text("version: v1\nnode-scheduler-policy: spread\ndefault-memory: 2000\nlisten: 0.0.0.0:9000\n")
    settings = load(
        ["--config", str(config), "--default-memory", "3000"],
        {"HAMI_EXTENDER_LISTEN": "127.0.0.1:9100", "HAMI_EXTENDER_DEFAULT_MEMORY": "2500"},
    )
    assert settings.node_scheduler_policy == "spread"  # file
    assert settings.listen == ("127.0.0.1", 9100)  # env over file
    assert settings.default_memory == 3000  # flag over env


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-scheduler-policy", "random"], "supported policies are 'binpack', 'spread', 'numa', 'mutex'"),
        (["--resource-memory", "gpumem"], "must look like '<domain>/<name>'"),
        (["--memory-factor", "0"], "memory factor must be at least 1"),
        (["--lease-duration", "2", "--renew-interval", "5"], "lease-duration must be greater than renew-interval"),
    ],
)
def test_bad_settings_say_what_to_change(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((ConfigError, SystemExit)) as excinfo:
        load(argv)
    text = str(excinfo.value) + capsys.readouterr().err
    assert message in text


def test_cli_help_and_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--help"])
    assert excinfo.value.code == 0
    assert "HAMI_EXTENDER_LISTEN" in capsys.readouterr().out
    assert cli.main(["--memory-factor", "0"]) == 2
    assert "memory factor must be at least 1" in capsys.readouterr().err


def test_the_default_gpu_policy_may_be_a_hami_chain() -> None:
    settings = load(["--gpu-scheduler-policy", "binpack,topology-aware"])
    config = cli.extender_config(settings)
    assert config.gpu_policy.value == "binpack"
    assert config.gpu_chain is not None
    assert config.gpu_chain.topology_aware
