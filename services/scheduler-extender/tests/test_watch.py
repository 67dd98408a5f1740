"""The list+watch loop: paged list, events, bookmarks, 410 Gone -> re-list, errors -> retry with backoff.

The API responses come from ``ScriptedApi``, a test double of the list/watch HTTP responses (the real API server
is exercised by the end-to-end tests).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from extender_builders import gpu, node_json, pod_json
from hami_scheduler_extender.adapters import watch
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.kube import Reflector
from kubernetes_asyncio.client.exceptions import ApiException


class _Content:
    def __init__(self, chunks: list[bytes], hold: asyncio.Event | None) -> None:
        self._chunks, self._hold = chunks, hold

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._hold is not None:
            await self._hold.wait()


class _Response:
    def __init__(
        self, body: bytes = b"", chunks: list[bytes] | None = None, hold: asyncio.Event | None = None, status: int = 200
    ) -> None:
        self._body = body
        self.status = status
        self.content = _Content(chunks or [], hold)

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        return None


def _line(kind: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class ScriptedApi:
    """Answers list calls with pages and watch calls with scripted event streams, recording the calls."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[dict[str, Any]] = []
        self.hold = asyncio.Event()

    async def __call__(self, **kwargs: Any) -> _Response:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            step = self.watches.pop(0)
            if isinstance(step, Exception):
                raise step
            return _Response(chunks=step, hold=self.hold if not self.watches else None)
        if isinstance(self.lists[0], Exception):
            raise self.lists.pop(0)
        pages = self.lists[0]
        index = 0 if "_continue" not in kwargs else int(kwargs["_continue"])
        page = pages[index]
        if index + 1 == len(pages):
            self.lists.pop(0)
        return _Response(body=json.dumps(page).encode())


async def run_until(reflector: Reflector, condition: Callable[[], bool]) -> None:
    """Run the reflector's loop until ``condition`` holds (20 s at most), then stop it."""
    task = asyncio.create_task(reflector.run())
    try:
        for _ in range(2000):
            if condition():
                return
            if task.done():
                task.result()  # raises what ended the loop
                raise AssertionError("the watch loop returned")
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached within 20 s")
    finally:
        task.cancel()


def nodes_into(state: ClusterState, api: ScriptedApi) -> Reflector:
    """A node reflector over ``api`` feeding ``state`` through the extender's handlers."""
    return Reflector(
        kind="nodes",
        list_call=api,
        on_list=lambda items: watch.apply_node_list(state, items, count_resource="nvidia.com/gpu"),
        on_event=lambda kind, obj: watch.apply_node_event(state, kind, obj, count_resource="nvidia.com/gpu"),
    )


def _node(name: str, version: str) -> dict[str, Any]:
    obj = node_json(name, [gpu(f"GPU-{name}")])
    obj["metadata"]["resourceVersion"] = version
    return obj


async def test_list_watch_bookmark_gone_and_relist() -> None:
    state = ClusterState()
    first_list = [
        {"items": [_node("a", "1")], "metadata": {"continue": "1", "resourceVersion": ""}},
        {"items": [_node("b", "2")], "metadata": {"resourceVersion": "10"}},
    ]
    second_list = [{"items": [_node("c", "30")], "metadata": {"resourceVersion": "30"}}]
    api = ScriptedApi(
        lists=[first_list, second_list],
        watches=[
            # Split across chunks on purpose: lines are reassembled.
            [
                _line("ADDED", _node("d", "11"))[:20],
                _line("ADDED", _node("d", "11"))[20:],
                _line("BOOKMARK", {"metadata": {"resourceVersion": "15"}}),
            ],
            [_line("DELETED", _node("a", "16")), _line("ERROR", {"code": 410, "message": "too old"})],
            [_line("MODIFIED", _node("c", "31"))],
        ],
    )
    restarts: list[int] = []
    reflector = Reflector(
        kind="nodes",
        list_call=api,
        on_list=lambda items: watch.apply_node_list(state, items, count_resource="nvidia.com/gpu"),
        on_event=lambda kind, obj: watch.apply_node_event(state, kind, obj, count_resource="nvidia.com/gpu"),
        on_restart=lambda: restarts.append(1),
    )
    await run_until(reflector, lambda: len(api.calls) >= 6)
    assert reflector.synced.is_set()
    kinds = [("watch" if c.get("watch") else "list", c.get("resource_version"), c.get("_continue")) for c in api.calls]
    assert kinds == [
        ("list", None, None),
        ("list", None, "1"),
        ("watch", "10", None),
        ("watch", "15", None),  # resumed from the bookmark after the server ended the stream
        ("list", None, None),  # 410 Gone: list again
        ("watch", "30", None),
    ]
    assert sorted(state.node_names()) == ["c"]  # the re-list replaced everything
    assert restarts == [1]


async def test_errors_are_retried() -> None:
    state = ClusterState()
    api = ScriptedApi(
        lists=[[{"items": [_node("a", "1")], "metadata": {"resourceVersion": "5"}}]],
        watches=[OSError("connection reset"), [_line("ADDED", _node("b", "6"))]],
    )
    reflector = nodes_into(state, api)
    await run_until(reflector, lambda: "b" in set(state.node_names()))
    assert [bool(c.get("watch")) for c in api.calls] == [False, True, True]
    assert api.calls[2]["resource_version"] == "5"


async def test_an_event_that_cannot_be_handled_does_not_stop_the_watch() -> None:
    seen: list[str] = []

    def on_event(kind: str, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name == "poison":
            raise TypeError("unexpected shape")
        seen.append(name)

    api = ScriptedApi(
        lists=[[{"items": [], "metadata": {"resourceVersion": "1"}}]],
        watches=[[_line("ADDED", _node("poison", "2")), _line("ADDED", _node("fine", "3"))]],
    )
    reflector = Reflector(kind="nodes", list_call=api, on_list=lambda items: None, on_event=on_event)
    await run_until(reflector, lambda: seen == ["fine"])


async def test_a_watch_refused_with_410_lists_again() -> None:
    state = ClusterState()
    api = ScriptedApi(
        lists=[
            [{"items": [_node("a", "1")], "metadata": {"resourceVersion": "5"}}],
            [{"items": [_node("b", "9")], "metadata": {"resourceVersion": "9"}}],
        ],
        watches=[ApiException(status=410, reason="Gone"), [_line("ADDED", _node("c", "10"))]],
    )
    reflector = nodes_into(state, api)
    await run_until(reflector, lambda: "c" in set(state.node_names()))
    kinds = [("watch" if c.get("watch") else "list", c.get("resource_version")) for c in api.calls]
    assert kinds == [("list", None), ("watch", "5"), ("list", None), ("watch", "9")]
    assert sorted(state.node_names()) == ["b", "c"]


def _bound_pod(name: str, version: str, allocated: str) -> dict[str, Any]:
    pod = pod_json(name, uid=f"uid-{name}", node_name="n1")
    pod["metadata"]["resourceVersion"] = version
    pod["metadata"]["annotations"] = {names.VGPU_NODE: "n1", names.DEVICES_ALLOCATED: allocated}
    return pod


def _used(state: ClusterState) -> int:
    view = state.view("n1")
    assert view is not None
    return sum(d.used_mem for d in view.devices)


async def test_a_5000_digit_number_on_a_bound_pod_then_a_relist_leaves_the_cache_synced_and_right() -> None:
    """Issue 16: a 5,000-digit number in vgpu-devices-allocated used to make every re-list fail (never ready,
    or served from a dead watch). The pod is ignored for capacity; the others count; the re-list succeeds."""
    state = ClusterState()
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]))])
    poison = _bound_pod("poison", "3", f"GPU-a,NVIDIA,{'9' * 5000},0:;")
    good = _bound_pod("good", "4", "GPU-b,NVIDIA,3000,0:;")
    later = _bound_pod("later", "12", "GPU-a,NVIDIA,2000,0:;")
    api = ScriptedApi(
        lists=[
            [{"items": [good], "metadata": {"resourceVersion": "5"}}],
            [{"items": [poison, good, later], "metadata": {"resourceVersion": "20"}}],
        ],
        watches=[
            [_line("MODIFIED", poison), _line("ERROR", {"code": 410, "message": "too old"})],
            [_line("ADDED", _bound_pod("last", "21", "GPU-b,NVIDIA,100,0:;"))],
        ],
    )
    counted: list[str] = []
    ignored = watch.IgnoredPods(count=counted.append)
    reflector = Reflector(
        kind="pods",
        list_call=api,
        on_list=lambda items: watch.apply_pod_list(state, items, ignored=ignored),
        on_event=lambda kind, obj: watch.apply_pod_event(state, kind, obj, ignored=ignored),
    )
    await run_until(reflector, lambda: state.allocation("uid-last") is not None)
    assert reflector.synced.is_set()
    assert [("watch" if c.get("watch") else "list") for c in api.calls] == ["list", "watch", "list", "watch"]
    assert _used(state) == 3000 + 2000 + 100
    assert state.allocation("uid-poison") is None
    assert counted == ["malformed"]  # once for the pod, however often it is seen


async def test_a_list_that_cannot_be_applied_clears_synced_until_one_is() -> None:
    applied: list[int] = []

    def on_list(items: list[Any]) -> None:
        if len(applied) == 1 and not items:
            applied.append(-1)
            raise RuntimeError("a handler bug")
        applied.append(len(items))

    api = ScriptedApi(
        lists=[
            [{"items": [_node("a", "1")], "metadata": {"resourceVersion": "5"}}],
            [{"items": [], "metadata": {"resourceVersion": "6"}}],
            ApiException(status=500, reason="etcd timeout"),
            [{"items": [_node("b", "7")], "metadata": {"resourceVersion": "7"}}],
        ],
        watches=[ApiException(status=410, reason="Gone"), [_line("ADDED", _node("c", "8"))]],
    )
    reflector = Reflector(kind="nodes", list_call=api, on_list=on_list, on_event=lambda kind, obj: None)
    synced_after_failure: list[bool] = []
    task = asyncio.create_task(reflector.run())
    try:
        for _ in range(2000):
            if applied == [1, -1] and not synced_after_failure:
                synced_after_failure.append(reflector.synced.is_set())
            if applied == [1, -1, 1] and reflector.synced.is_set():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the reflector did not recover: {applied}")
    finally:
        task.cancel()
    assert synced_after_failure == [False]
    assert [("watch" if c.get("watch") else "list") for c in api.calls][:5] == ["list", "watch", "list", "list", "list"]


async def test_malformed_pages_and_events_do_not_stop_the_reflector() -> None:
    seen: list[Any] = []
    api = ScriptedApi(
        lists=[
            [{"items": "not a list", "metadata": {"resourceVersion": "1"}}],
            [{"items": [_node("a", "1")], "metadata": {"resourceVersion": "2"}}],
        ],
        watches=[[b'"just a string"\n', b'{"type": "ADDED", "object": [1, 2]}\n', _line("ADDED", _node("b", "3"))]],
    )
    reflector = Reflector(
        kind="nodes",
        list_call=api,
        on_list=lambda items: seen.extend(items),
        on_event=lambda kind, obj: seen.append(obj),
    )
    await run_until(reflector, lambda: len(seen) == 2)
    assert [o["metadata"]["name"] for o in seen] == ["a", "b"]


async def test_a_list_is_digested_page_by_page_and_the_cache_gets_the_same_holds() -> None:
    """The raw JSON of a page is turned into holds as the page arrives (the memory of a 40,000-pod list is one
    page, not the list): each item is digested before the next page is requested, and the cache ends with the
    holds a whole-list apply gives."""
    state = ClusterState()
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]))])
    pods = [_bound_pod(f"p{i}", str(i), f"GPU-{'ab'[i % 2]},NVIDIA,{100 * (i + 1)},0:;") for i in range(4)]
    pods[3]["status"]["phase"] = "Succeeded"  # not live: digested to nothing
    api = ScriptedApi(
        lists=[
            [
                {"items": pods[:2], "metadata": {"continue": "1", "resourceVersion": ""}},
                {"items": pods[2:], "metadata": {"resourceVersion": "9"}},
            ]
        ],
        watches=[[]],
    )
    ignored = watch.IgnoredPods()
    digested_at: list[int] = []  # list calls made when each item was digested

    def digest(pod: Any) -> watch.PodDigest | None:
        digested_at.append(len(api.calls))
        return watch.digest_pod(pod, ignored=ignored)

    received: list[Any] = []

    def on_list(digests: list[Any]) -> None:
        received.extend(digests)
        watch.apply_pod_digests(state, digests, ignored=ignored)

    reflector = Reflector(kind="pods", list_call=api, digest=digest, on_list=on_list, on_event=lambda kind, obj: None)
    await run_until(reflector, reflector.synced.is_set)
    assert digested_at == [1, 1, 2, 2]
    assert [d.uid if d is not None else None for d in received] == ["uid-p0", "uid-p1", "uid-p2", None]
    whole = ClusterState()
    whole.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]))])
    watch.apply_pod_list(whole, pods)
    assert _used(state) == _used(whole) == 100 + 200 + 300


async def test_a_digest_that_fails_fails_the_list_which_is_retried() -> None:
    api = ScriptedApi(
        lists=[
            [{"items": [_node("a", "1")], "metadata": {"resourceVersion": "5"}}],
            [{"items": [_node("b", "6")], "metadata": {"resourceVersion": "6"}}],
        ],
        watches=[[]],
    )
    applied: list[list[Any]] = []

    def digest(node: Any) -> str:
        name = str(node["metadata"]["name"])
        if name == "a":
            raise RuntimeError("a digest bug")
        return name

    reflector = Reflector(
        kind="nodes", list_call=api, digest=digest, on_list=applied.append, on_event=lambda k, o: None
    )
    await run_until(reflector, reflector.synced.is_set)
    assert applied == [["b"]]  # the failed list reached nothing; the retry did
