"""``--disable-control-namespaces``: flag, env and config-file forms reach the injection config; bad names are
refused with what to write."""

from __future__ import annotations

from pathlib import Path

import pytest
from hami_device_plugin.app.settings import PROGRAM
from hami_shared.config import ConfigError


def test_default_allows_no_namespace_and_every_form_sets_the_list(tmp_path: Path) -> None:
    base = ["--node-name=n"]
    assert PROGRAM.load_settings(base, environ={}).injection().disable_control_namespaces == frozenset()
    flag = PROGRAM.load_settings([*base, "--disable-control-namespaces=ml,research"], environ={})
    assert flag.injection().disable_control_namespaces == frozenset({"ml", "research"})
    env = PROGRAM.load_settings(base, environ={"HAMI_DEVICE_PLUGIN_DISABLE_CONTROL_NAMESPACES": "ml"})
    assert env.injection().disable_control_namespaces == frozenset({"ml"})
    config = tmp_path / "config.yaml"
    config.write_text("version: v1\ndisable-control-namespaces: [ml, team-b]\n")
    from_file = PROGRAM.load_settings([*base, f"--config={config}"], environ={})
    assert from_file.injection().disable_control_namespaces == frozenset({"ml", "team-b"})


@pytest.mark.parametrize("value", ["ML", "a_b", "-x", "x" * 64])
def test_a_bad_namespace_name_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="is not a namespace name"):
        PROGRAM.load_settings(["--node-name=n", f"--disable-control-namespaces={value}"], environ={})
