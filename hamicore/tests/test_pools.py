"""Stream-ordered pools: the budget follows what a pool holds, not what is allocated from it. Memory freed by
cuMemFreeAsync stays in the pool (and on the card) until a synchronisation trims the pool to its release threshold,
or cuMemPoolTrimTo does; the driver double behaves so, and the container's views and budget show it."""

from __future__ import annotations

from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2


def test_a_pool_keeps_freed_memory_charged_until_a_synchronisation(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "async",
        "60m",
        "freeasync",
        "0",
        "info",
        "budget",
        "0",
        "sync",
        "info",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    held, released = by_cmd(lines, "info")
    assert (held["free"], released["free"]) == (40 * MIB, 100 * MIB)
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [60 * MIB, 0]


def test_memory_a_pool_keeps_is_reused_by_the_pool_at_the_cap(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "async",
        "60m",
        "freeasync",
        "0",
        "async",
        "60m",
        "async",
        "60m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in by_cmd(lines, "async")] == [0, 0, OUT_OF_MEMORY]
    assert by_cmd(lines, "budget")[0]["used_total"] == 60 * MIB


def test_what_a_pool_keeps_is_not_available_to_other_allocations_until_it_gives_it_back(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "async",
        "60m",
        "freeasync",
        "0",
        "alloc",
        "60m",
        "sync",
        "alloc",
        "60m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in by_cmd(lines, "alloc")] == [OUT_OF_MEMORY, 0]
    assert by_cmd(lines, "budget")[0]["used_total"] == 60 * MIB


def test_a_release_threshold_keeps_memory_through_synchronisations_until_trimmed(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "pool-threshold",
        "0",
        "1g",
        "async",
        "60m",
        "freeasync",
        "0",
        "sync",
        "info",
        "budget",
        "0",
        "pool-trim",
        "0",
        "16m",
        "budget",
        "0",
        "pool-trim",
        "0",
        "0",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert by_cmd(lines, "info")[0]["free"] == 40 * MIB
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [60 * MIB, 16 * MIB, 0]
