"""Graph memory nodes: memory a graph allocates inside itself. The driver double gives an executable graph its
memory nodes' bytes from the device's graph pool at upload or first launch and keeps them reserved after the
executable graph is destroyed until cuDeviceGraphMemTrim; libvgpu charges them from instantiation (an
instantiation over the budget is refused, so a launch never has to be), and what the graph pool keeps after."""

from __future__ import annotations

from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2


def test_an_executable_graph_is_charged_its_memory_nodes_from_instantiation(hami: Hami) -> None:
    """Charged from instantiation; after the executable graph is destroyed its memory stays in the device's graph
    pool (charged) until trimmed."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "graph-mem",
        "60m",
        "budget",
        "0",
        "graph-upload",
        "graph-run",
        "info",
        "graph-exec-destroy",
        "budget",
        "0",
        "graph-trim",
        "0",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in lines if r["cmd"].startswith("graph")] == [0, 0, 0, 0, 0]
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [60 * MIB, 60 * MIB, 0]
    assert by_cmd(lines, "info")[0]["free"] == 40 * MIB


def test_a_graph_whose_memory_does_not_fit_is_refused_at_instantiation(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx", "0", "alloc", "50m", "graph-mem", "60m", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT="100m"
    )
    assert by_cmd(lines, "graph-mem")[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 50 * MIB


def test_the_graph_pool_keeps_a_destroyed_graphs_memory_charged_until_trimmed(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "graph-mem",
        "60m",
        "graph-upload",
        "graph-exec-destroy",
        "budget",
        "0",
        "alloc",
        "60m",
        "graph-trim",
        "0",
        "budget",
        "0",
        "alloc",
        "60m",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [60 * MIB, 0]
    assert [r["rc"] for r in by_cmd(lines, "alloc")] == [OUT_OF_MEMORY, 0]


def test_a_graph_never_uploaded_leaves_nothing_in_the_graph_pool(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx", "0", "graph-mem", "60m", "graph-exec-destroy", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT="100m"
    )
    assert by_cmd(lines, "budget")[0]["used_total"] == 0
