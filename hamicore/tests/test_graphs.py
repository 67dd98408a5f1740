"""Graph memory nodes: memory a graph allocates inside itself. The driver double gives an executable graph its
memory nodes' bytes from the device's graph pool at upload or first launch; libvgpu charges them from
instantiation (an instantiation over the budget is refused, so a launch never has to be) until the executable
graph is destroyed."""

from __future__ import annotations

from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2


def test_an_executable_graph_is_charged_its_memory_nodes_until_destroyed(hami: Hami) -> None:
    lines = hami.probe("init", "ctx", "0", "graph-mem", "60m", "budget", "0", "graph-upload", "graph-run", "info",
                       "graph-exec-destroy", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert [r["rc"] for r in lines if r["cmd"].startswith("graph")] == [0, 0, 0, 0]
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [60 * MIB, 0]
    assert by_cmd(lines, "info")[0]["free"] == 40 * MIB


def test_a_graph_whose_memory_does_not_fit_is_refused_at_instantiation(hami: Hami) -> None:
    lines = hami.probe("init", "ctx", "0", "alloc", "50m", "graph-mem", "60m", "budget", "0",
                       CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert by_cmd(lines, "graph-mem")[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 50 * MIB
