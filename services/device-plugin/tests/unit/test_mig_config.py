"""The per-node MIG keys (core/config.py): ``operatingmode`` (hami-core, mig, and mps as hami-core published as mps)
and ``migstrategy`` (none, single, mixed), from the node config file and from the settings, refused with the key and
what to write."""

from __future__ import annotations

from pathlib import Path

import pytest
from hami_device_plugin.app.mig import load_geometries
from hami_device_plugin.app.settings import Settings
from hami_device_plugin.core.config import DeviceConfig, NodeConfigError, apply_node_config
from hami_shared.config import ConfigError

NODE = "node-a"


@pytest.mark.parametrize(
    ("entry", "mode", "strategy"),
    [
        ({"operatingmode": "mig"}, "mig", "none"),
        ({"operatingmode": "mps"}, "mps", "none"),
        ({"operatingmode": "hami-core", "migstrategy": "single"}, "hami-core", "single"),
        ({"migstrategy": "mixed"}, "hami-core", "mixed"),
        ({"migstrategy": "none"}, "hami-core", "none"),
    ],
)
def test_mode_and_strategy_from_the_node_entry(entry: dict[str, object], mode: str, strategy: str) -> None:
    config = apply_node_config(DeviceConfig(), {"nodeconfig": [{"name": NODE, **entry}]}, NODE, source="c.json")
    assert (config.mode, config.mig_strategy) == (mode, strategy)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"operatingmode": "MIG"}, "operating mode 'MIG' is not one of ['hami-core', 'mig', 'mps']"),
        ({"migstrategy": "all"}, "MIG strategy 'all' is not one of ['none', 'single', 'mixed']"),
        ({"migstrategy": 1}, "migstrategy: expected a string"),
        ({"operatingmode": "mig", "migstrategy": "mixed"}, "set migstrategy none for dynamic MIG"),
    ],
)
def test_bad_mig_keys_are_refused_with_the_key_and_what_to_write(entry: dict[str, object], message: str) -> None:
    with pytest.raises(NodeConfigError) as refused:
        apply_node_config(DeviceConfig(), {"nodeconfig": [{"name": NODE, **entry}]}, NODE, source="c.json")
    assert "c.json: nodeconfig[name=node-a]" in str(refused.value)
    assert message in str(refused.value)


def test_settings_carry_the_strategy_into_the_device_config_and_refuse_a_contradiction() -> None:
    assert Settings(node_name=NODE, mig_strategy="mixed").base_device_config().mig_strategy == "mixed"
    with pytest.raises(ValueError, match="operating mode mig manages MIG instances itself"):
        Settings(node_name=NODE, mode="mig", mig_strategy="single")
    with pytest.raises(ValueError, match="mig-reconcile-interval"):
        Settings(node_name=NODE, mig_reconcile_interval=0)


def test_geometries_file_is_hami_s_device_config_and_a_mistake_names_the_key(tmp_path: Path) -> None:
    good = tmp_path / "device-config.yaml"
    good.write_text(
        "nvidia:\n  knownMigGeometries:\n  - models: [A100-SXM4-40GB]\n    allowedGeometries:\n"
        "    - [{name: 1g.5gb, memory: 5120, count: 7}]\n"
    )
    (entry,) = load_geometries(good) or ()
    assert entry.models == ("A100-SXM4-40GB",)
    assert entry.geometries[0][0].count == 7
    assert load_geometries(None) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "nvidia:\n  knownMigGeometries:\n  - models: [A30]\n    allowedGeometries:\n"
        "    - [{name: 1g.6gb, memory: 6G, count: 4}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"bad.yaml: nvidia.knownMigGeometries\[0\].allowedGeometries\[0\]\[0\].memory"
    ):
        load_geometries(bad)
    plain = tmp_path / "plain.yaml"
    plain.write_text("nvidia:\n  deviceSplitCount: 4\n")
    assert load_geometries(plain) is None
