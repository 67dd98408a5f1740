"""Settings from flags, environment and config file."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from hami_shared.config import ConfigError, load_settings, parse_host_port, setting


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoSettings:
    listen: tuple[str, int] = setting(("0.0.0.0", 8443), help="address", parse=parse_host_port)
    scheduler_name: str = setting("hami-scheduler", help="scheduler name")
    split_count: int = setting(10, help="split count")
    scaling: float = setting(1.0, help="memory scaling")
    leader_elect: bool = setting(False, help="leader election")
    log_level: str = setting("info", help="log level", choices=("debug", "info", "warning", "error"))
    kubeconfig: pathlib.Path | None = setting(None, help="kubeconfig")
    filtered: tuple[str, ...] = setting((), help="filtered devices")

    def __post_init__(self) -> None:
        if self.split_count < 1:
            raise ValueError(f"split_count is {self.split_count}; it must be at least 1")


def load(argv: list[str], env: dict[str, str] | None = None) -> DemoSettings:
    return load_settings(DemoSettings, prog="demo", description="demo", env_prefix="DEMO", argv=argv, environ=env or {})


def test_defaults() -> None:
    s = load([])
    assert s.listen == ("0.0.0.0", 8443)
    assert s.kubeconfig is None
    assert s.filtered == ()


def test_precedence_flag_over_env_over_file(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("version: v1\nsplit-count: 4\nscheduler_name: from-file\nfiltered: [GPU-a, GPU-b]\nscaling: 2\n")
    s = load(
        ["--config", str(config), "--split-count", "7"],
        {"DEMO_SPLIT_COUNT": "5", "DEMO_SCHEDULER_NAME": "env"},
    )
    assert s.split_count == 7
    assert s.scheduler_name == "env"
    assert s.filtered == ("GPU-a", "GPU-b")
    assert s.scaling == 2.0
    s = load([], {"DEMO_CONFIG": str(config), "DEMO_LEADER_ELECT": "yes", "DEMO_FILTERED": "x, y"})
    assert s.split_count == 4
    assert s.leader_elect is True
    assert s.filtered == ("x", "y")


def test_bool_flags() -> None:
    assert load(["--leader-elect"]).leader_elect is True
    assert load(["--no-leader-elect"], {"DEMO_LEADER_ELECT": "true"}).leader_elect is False


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        ([], {"DEMO_SPLIT_COUNT": "ten"}, "environment variable DEMO_SPLIT_COUNT='ten'"),
        ([], {"DEMO_LEADER_ELECT": "maybe"}, "expected true or false"),
        ([], {"DEMO_LOG_LEVEL": "loud"}, "must be one of debug, info"),
        ([], {"DEMO_LISTEN": "8443"}, "expected HOST:PORT"),
        ([], {"DEMO_SPLIT_COUNT": "0"}, "it must be at least 1"),
    ],
)
def test_errors_name_the_source(argv: list[str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    assert fragment in str(info.value)


def test_bad_flag_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load(["--split-count", "x"])
    assert info.value.code == 2
    assert "flag --split-count='x'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("splitcount: 3\n", "unknown setting 'splitcount'; known settings:"),
        ("version: v2\n", "version 'v2' is not supported"),
        ("- a\n", "top level must be a mapping"),
        ("split-count: [1]\n", "expected int"),
        ("leader-elect: 1\n", "expected bool"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_config_file_errors(tmp_path: pathlib.Path, content: str, fragment: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError) as info:
        load(["--config", str(config)])
    assert fragment in str(info.value)
    assert str(config) in str(info.value)


def test_missing_config_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load(["--config", str(tmp_path / "absent.yaml")])


def test_help_lists_env_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load(["--help"])
    out = capsys.readouterr().out
    assert "DEMO_SPLIT_COUNT" in out
    assert "DEMO_CONFIG" in out


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_host_port("[::1]:8443") == ("::1", 8443)
    assert parse_host_port(":80") == ("0.0.0.0", 80)
    with pytest.raises(ValueError, match="outside"):
        parse_host_port("h:70000")
