"""Oversubscription (memory-scaling > 1): the container's budget is larger than its share of the card, and an
allocation the card cannot hold is served from managed memory, which spills to host memory, instead of failing. It
still counts in the budget, which stays the hard cap. Under the device plugin's read-only spec the spec's flag
decides (the environment's CUDA_OVERSUBSCRIBE is the tenant's and is ignored); without a spec, CUDA_OVERSUBSCRIBE."""

from __future__ import annotations

import pytest
from conftest import MIB, Hami, by_cmd
from hami_device_plugin.core import spec as spec_format
from hami_device_plugin.core.region import RegionDevice, RegionSpec

OUT_OF_MEMORY = 2
G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"  # the fake driver's GPU 0


def test_allocations_beyond_the_card_spill_to_managed_memory_within_the_budget(hami: Hami) -> None:
    # A 1 GiB card, a 1.5 GiB budget (memory-scaling 1.5): 6 x 256 MiB fit the budget, 4 of them the card.
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "fill",
        "256m",
        "budget",
        "0",
        "free-all",
        "budget",
        "0",
        FAKE_GPU_MEMORY_MIB="1024",
        CUDA_DEVICE_MEMORY_LIMIT="1536m",
        CUDA_OVERSUBSCRIBE="true",
    )
    fill = by_cmd(lines, "fill")[0]
    assert (fill["count"], fill["rc"]) == (6, OUT_OF_MEMORY)  # the 7th is over the budget
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [1536 * MIB, 0]
    assert "served from managed memory" not in hami.last_stderr  # info lines are off at the default log level


def test_without_oversubscription_the_card_refuses_what_it_cannot_hold(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx", "0", "fill", "256m", "budget", "0", FAKE_GPU_MEMORY_MIB="1024", CUDA_DEVICE_MEMORY_LIMIT="1536m"
    )
    fill = by_cmd(lines, "fill")[0]
    assert (fill["count"], fill["rc"]) == (4, OUT_OF_MEMORY)
    assert by_cmd(lines, "budget")[0]["used_total"] == 1024 * MIB  # the refused one was given back


def test_the_spill_is_logged_at_info_level(hami: Hami) -> None:
    hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "800m",
        "alloc",
        "400m",
        FAKE_GPU_MEMORY_MIB="1024",
        CUDA_DEVICE_MEMORY_LIMIT="2g",
        CUDA_OVERSUBSCRIBE="true",
        LIBCUDA_LOG_LEVEL="3",
    )
    assert "oversubscription: 419430400 bytes served from managed memory (the GPU is full)" in hami.last_stderr


def write_spec(hami: Hami, limit_mib: int, *, oversubscribe: bool) -> None:
    """The device plugin's read-only spec (its own writer), mounted at /etc/hami/vgpu.spec for the probe."""
    region = RegionSpec(devices=(RegionDevice(G0, limit_mib * MIB, 0),))
    path = hami.tmp / "vgpu.spec"
    path.write_bytes(
        spec_format.build_spec(
            region, str(hami.region), allow_disable_control=False, vulkan=False, oversubscribe=oversubscribe
        )
    )
    path.chmod(0o444)
    hami.spec = path


def test_under_a_spec_without_oversubscription_the_tenants_variable_has_no_effect(hami: Hami) -> None:
    """The container controls its environment: CUDA_OVERSUBSCRIBE=true must not turn a budget the plugin sized to
    the card into one that spills (the spec decides, like the limits), and it is named in the one warning."""
    write_spec(hami, 1536, oversubscribe=False)
    lines = hami.probe(
        "init", "ctx", "0", "fill", "256m", "budget", "0", FAKE_GPU_MEMORY_MIB="1024", CUDA_OVERSUBSCRIBE="true"
    )
    fill = by_cmd(lines, "fill")[0]
    assert (fill["count"], fill["rc"]) == (4, OUT_OF_MEMORY)
    assert by_cmd(lines, "budget")[0]["used_total"] == 1024 * MIB
    warnings = [line for line in hami.last_stderr.splitlines() if "ignoring" in line]
    assert len(warnings) == 1, hami.last_stderr
    assert "CUDA_OVERSUBSCRIBE" in warnings[0]


@pytest.mark.parametrize("env", [{}, {"CUDA_OVERSUBSCRIBE": "false"}])
def test_the_spec_s_oversubscription_flag_spills_whatever_the_environment_says(hami: Hami, env: dict[str, str]) -> None:
    write_spec(hami, 1536, oversubscribe=True)
    hami.env.update(env)
    lines = hami.probe(
        "init", "ctx", "0", "fill", "256m", "budget", "0", "free-all", "budget", "0", FAKE_GPU_MEMORY_MIB="1024"
    )
    fill = by_cmd(lines, "fill")[0]
    assert (fill["count"], fill["rc"]) == (6, OUT_OF_MEMORY)  # 4 on the card, 2 spilled, the 7th over the budget
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [1536 * MIB, 0]
    assert "ignoring" not in hami.last_stderr
