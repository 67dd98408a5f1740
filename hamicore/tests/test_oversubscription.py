"""Oversubscription (memory-scaling > 1, CUDA_OVERSUBSCRIBE=true): the container's budget is larger than its share
of the card, and an allocation the card cannot hold is served from managed memory, which spills to host memory,
instead of failing. It still counts in the budget, which stays the hard cap."""

from __future__ import annotations

from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2


def test_allocations_beyond_the_card_spill_to_managed_memory_within_the_budget(hami: Hami) -> None:
    # A 1 GiB card, a 1.5 GiB budget (memory-scaling 1.5): 6 x 256 MiB fit the budget, 4 of them the card.
    lines = hami.probe("init", "ctx", "0", "fill", "256m", "budget", "0", "free-all", "budget", "0",
                       FAKE_GPU_MEMORY_MIB="1024", CUDA_DEVICE_MEMORY_LIMIT="1536m", CUDA_OVERSUBSCRIBE="true")
    fill = by_cmd(lines, "fill")[0]
    assert (fill["count"], fill["rc"]) == (6, OUT_OF_MEMORY)  # the 7th is over the budget
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [1536 * MIB, 0]
    assert "served from managed memory" not in hami.last_stderr  # info lines are off at the default log level


def test_without_oversubscription_the_card_refuses_what_it_cannot_hold(hami: Hami) -> None:
    lines = hami.probe("init", "ctx", "0", "fill", "256m", "budget", "0",
                       FAKE_GPU_MEMORY_MIB="1024", CUDA_DEVICE_MEMORY_LIMIT="1536m")
    fill = by_cmd(lines, "fill")[0]
    assert (fill["count"], fill["rc"]) == (4, OUT_OF_MEMORY)
    assert by_cmd(lines, "budget")[0]["used_total"] == 1024 * MIB  # the refused one was given back


def test_the_spill_is_logged_at_info_level(hami: Hami) -> None:
    hami.probe("init", "ctx", "0", "alloc", "800m", "alloc", "400m", FAKE_GPU_MEMORY_MIB="1024",
               CUDA_DEVICE_MEMORY_LIMIT="2g", CUDA_OVERSUBSCRIBE="true", LIBCUDA_LOG_LEVEL="3")
    assert "oversubscription: 419430400 bytes served from managed memory (the GPU is full)" in hami.last_stderr
