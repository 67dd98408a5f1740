"""HAMi's device-config.yaml read by the webhook (HAMi's webhook is its scheduler, reading the same file): from
HAMi's published default it reaches HAMi's admission settings; an operator's values apply; ours override."""

from __future__ import annotations

import pathlib

from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames
from hami_webhook.app.settings import PROGRAM
from hami_webhook.core.policy import MutationPolicy

HAMI_DEFAULT = pathlib.Path(__file__).parents[3] / "shared" / "tests" / "fixtures" / "hami" / "device-config.yaml"
CERTS = ["--cert-file", "/c.pem", "--key-file", "/k.pem"]


def test_hamis_published_default_gives_hamis_admission_settings() -> None:
    settings = PROGRAM.load_settings([*CERTS, "--hami-device-config", str(HAMI_DEFAULT)], environ={})
    policy = settings.policy()
    assert policy.resource_names == ResourceNames(
        count="nvidia.com/gpu",
        memory="nvidia.com/gpumem",
        memory_percentage="nvidia.com/gpumem-percentage",
        cores="nvidia.com/gpucores",
        priority="nvidia.com/priority",
    )
    assert policy.default_gpu_count == 1  # defaultGPUNum
    assert policy.runtime_class_name is None  # runtimeClassName: "" (unset)
    assert policy.core_policy == "default"  # gpuCorePolicy
    assert policy == MutationPolicy()


def test_an_operators_values_apply_and_ours_override(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text(
        "nvidia:\n  resourceCountName: volcano.sh/vgpu-number\n  defaultGPUNum: 2\n  runtimeClassName: nvidia\n"
        '  gpuCorePolicy: force\n  overwriteEnv: "true"\n'
    )
    policy = PROGRAM.load_settings([*CERTS, "--hami-device-config", str(path)], environ={}).policy()
    assert policy.resource_names.count == "volcano.sh/vgpu-number"
    assert policy.resource_names.memory == DEFAULT_RESOURCE_NAMES.memory
    assert (policy.default_gpu_count, policy.runtime_class_name, policy.core_policy) == (2, "nvidia", "force")
    assert policy.overwrite_env
    ours = PROGRAM.load_settings(
        [*CERTS, "--hami-device-config", str(path), "--runtime-class-name", "hami"],
        environ={"HAMI_WEBHOOK_DEFAULT_GPU_COUNT": "3"},
    ).policy()
    assert (ours.default_gpu_count, ours.runtime_class_name, ours.core_policy) == (3, "hami", "force")
