"""Column store of every node's GPUs, so filter and prioritize are a few array operations.

One row per node, one column per GPU (padded to the widest node), rewritten whenever the usage cache
rebuilds that node's view, never per request. :meth:`DeviceTable.screen` answers "which candidates fit,
and why not" for the common pod shape (one GPU container, no UUID lists, no NUMA binding across cards) with
exactly the rules and reasons of :func:`core.fit.fit_pod` for all candidates at once (a property test);
other shapes return ``None`` and the caller runs ``fit_pod`` per node, as bind always does.

A MIG card is decided by one column, the largest instance it can still give (``DeviceView.mig_free_memory``,
computed when the row is written): one instance per card, so it fits iff it can give the request's memory.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hami_scheduler_extender.core.fit import MAX_PRIORITY, REASON_ORDER
from hami_scheduler_extender.core.model import MODE_MIG, FailureReason, NodeView, Policy
from hami_scheduler_extender.core.objects import NodeInventory
from hami_scheduler_extender.core.request import PodRequest

# Card codes, in the order fit_pod checks them (a card takes the first that applies).
_FIT, _ABSENT = 0, 1
_CHECKS = (
    FailureReason.CARD_NOT_HEALTH,
    FailureReason.CARD_CORDONED,
    FailureReason.CARD_TYPE_MISMATCH,
    FailureReason.CARD_TIME_SLICING_EXHAUSTED,
    FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT,
    FailureReason.CARD_INSUFFICIENT_MEMORY,
    FailureReason.CARD_INSUFFICIENT_CORE,
    FailureReason.CARD_COMPUTE_UNITS_EXHAUSTED,
    FailureReason.CARD_MIG_TOPOLOGY_INFEASIBLE,
)
_CODES = tuple(range(2, 2 + len(_CHECKS)))

IntArray = npt.NDArray[np.int64]


class DeviceTable:
    """Rows of per-GPU columns; not thread-safe (one event loop)."""

    def __init__(self, *, capacity: int = 256, width: int = 8) -> None:
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._capacity = 0
        self._width = width
        self._types: dict[str, int] = {}
        self._modes: dict[str, int] = {}
        self._alloc(capacity, width)

    present: npt.NDArray[np.bool_]
    healthy: npt.NDArray[np.bool_]
    cordoned: npt.NDArray[np.bool_]
    type_id: npt.NDArray[np.int32]
    mode_id: npt.NDArray[np.int32]
    count: IntArray
    total_mem: IntArray
    total_cores: IntArray
    used: IntArray
    used_mem: IntArray
    used_cores: IntArray
    mig: npt.NDArray[np.bool_]
    mig_free: IntArray
    exclusive: npt.NDArray[np.bool_]
    registered: npt.NDArray[np.bool_]
    cards: IntArray
    utilisation: npt.NDArray[np.float64]

    _COLUMNS: tuple[tuple[str, Any], ...] = (
        ("present", np.bool_),
        ("healthy", np.bool_),
        ("cordoned", np.bool_),
        ("type_id", np.int32),
        ("mode_id", np.int32),
        ("count", np.int64),
        ("total_mem", np.int64),
        ("total_cores", np.int64),
        ("used", np.int64),
        ("used_mem", np.int64),
        ("used_cores", np.int64),
        ("mig", np.bool_),
        ("mig_free", np.int64),
        ("exclusive", np.bool_),
    )
    _PER_ROW: tuple[tuple[str, Any], ...] = (("registered", np.bool_), ("cards", np.int64), ("utilisation", np.float64))

    def _alloc(self, capacity: int, width: int) -> None:
        """(Re)allocate to ``capacity`` rows x ``width`` columns, keeping what is there."""
        for name, dtype in self._COLUMNS:
            new = np.zeros((capacity, width), dtype=dtype)
            if self._capacity:
                old = getattr(self, name)
                new[: old.shape[0], : old.shape[1]] = old
            setattr(self, name, new)
        for name, row_dtype in self._PER_ROW:
            column: npt.NDArray[Any] = np.zeros(capacity, dtype=row_dtype)
            if self._capacity:
                previous = getattr(self, name)
                column[: previous.shape[0]] = previous
            setattr(self, name, column)
        self._capacity, self._width = capacity, width

    def _intern(self, table: dict[str, int], value: str) -> int:
        found = table.get(value)
        if found is None:
            found = table[value] = len(table)
        return found

    def put(self, view: NodeView) -> None:
        """Write (or rewrite) the node's row from its view."""
        row = self._rows.get(view.name)
        if row is None:
            row = self._free.pop() if self._free else len(self._rows)
            if row >= self._capacity or len(view.devices) > self._width:
                self._alloc(max(self._capacity, (row + 1) * 2), max(self._width, len(view.devices)))
            self._rows[view.name] = row
        elif len(view.devices) > self._width:
            self._alloc(self._capacity, len(view.devices))
        self.present[row] = False
        for column, d in enumerate(view.devices):
            self.present[row, column] = True
            self.healthy[row, column] = d.healthy
            self.cordoned[row, column] = d.cordoned
            self.type_id[row, column] = self._intern(self._types, d.type.lower())
            self.mode_id[row, column] = self._intern(self._modes, d.mode)  # "" matches any vgpu-mode, as in fit.py
            self.count[row, column] = d.count
            self.total_mem[row, column] = d.total_mem
            self.total_cores[row, column] = d.total_cores
            self.used[row, column] = d.used
            self.used_mem[row, column] = d.used_mem
            self.used_cores[row, column] = d.used_cores
            self.mig[row, column] = d.mode == MODE_MIG
            self.mig_free[row, column] = d.mig_free_memory
            self.exclusive[row, column] = d.exclusive
        self.registered[row] = view.registered
        self.cards[row] = len(view.devices)
        self.utilisation[row] = view.utilisation

    def remove(self, name: str) -> None:
        row = self._rows.pop(name, None)
        if row is not None:
            self.present[row] = False
            self.registered[row] = False
            self.cards[row] = 0
            self._free.append(row)

    @property
    def width(self) -> int:
        """Card columns per row (the widest node's cards)."""
        return self._width

    def rows(self, names: Sequence[str]) -> tuple[list[str], IntArray, list[str]]:
        """Known names with their rows, and the unknown names."""
        # map() over dict.get runs in C: this is on the hot path of every request.
        found = np.fromiter(map(self._rows.get, names, itertools.repeat(-1)), dtype=np.int64, count=len(names))
        if found.size and found.min() >= 0:
            return list(names), found, []
        known_mask = found >= 0
        known = [name for name, ok in zip(names, known_mask.tolist(), strict=True) if ok]
        unknown = [name for name, ok in zip(names, known_mask.tolist(), strict=True) if not ok]
        return known, found[known_mask], unknown

    @staticmethod
    def supports(request: PodRequest) -> bool:
        """Whether :meth:`screen` can decide for this request (else use fit_pod per node)."""
        needing = [n for n in request.needs if n.count > 0]
        options = request.options
        return (
            len(needing) == 1
            and not options.use_uuids
            and not options.nouse_uuids
            and not (options.numa_bind and needing[0].count > 1)
        )

    def screen(
        self, names: Sequence[str], request: PodRequest, inventories: Mapping[str, NodeInventory]
    ) -> tuple[list[str], dict[str, str], Counter[str]]:
        """Fitting names; for the others fit_pod's message; nodes per reason. Only when :meth:`supports`."""
        need = next(n for n in request.needs if n.count > 0)
        known, rows, unknown = self.rows(names)
        unregistered = FailureReason.NODE_UNREGISTERED.value
        failed: dict[str, str] = dict.fromkeys(unknown, f"{unregistered}: the node is unknown to the extender")
        tally: Counter[str] = Counter()
        if unknown:
            tally[unregistered] = len(unknown)
        if not known:
            return [], failed, tally
        codes = self._codes(rows, request)
        fitting = (codes == _FIT).sum(axis=1)
        cards = self.cards[rows]
        registered = self.registered[rows]
        ok = registered & (need.count <= cards) & (fitting >= need.count)
        fits = [name for name, good in zip(known, ok.tolist(), strict=True) if good]
        if len(fits) == len(known):
            return fits, failed, tally
        bad = np.flatnonzero(~ok)
        # One row per failed node: its card count, cards that fit, then how many cards failed each check. Nodes
        # with the same row get the same message, so each distinct row is worded once (with a vgpu-mode or a
        # model filter most candidates fail, alike).
        shapes = np.column_stack(
            [cards[bad], fitting[bad], *((codes[bad] == code).sum(axis=1) for code in _CODES)]
        ).tolist()
        registered_bad = registered[bad].tolist()
        worded: dict[tuple[int, ...], tuple[str, list[str]]] = {}
        for position, index in enumerate(bad.tolist()):
            name = known[index]
            if not registered_bad[position]:
                inventory = inventories.get(name)
                detail = inventory.detail if inventory is not None else ""
                failed[name] = f"{unregistered}: {detail}" if detail else unregistered
                tally[unregistered] += 1
                continue
            shape = tuple(shapes[position])
            found = worded.get(shape)
            if found is None:
                found = worded[shape] = self._word(shape, need.count)
            failed[name] = found[0]
            tally.update(found[1])
        return fits, failed, tally

    def _codes(self, rows: IntArray, request: PodRequest) -> npt.NDArray[np.int64]:
        """Per row and card, the first check the card fails (fit_pod's order), or _FIT."""
        need = next(n for n in request.needs if n.count > 0)
        options = request.options
        present = self.present[rows]
        used = self.used[rows]
        count = self.count[rows]
        total_mem = self.total_mem[rows]
        total_cores = self.total_cores[rows]
        used_cores = self.used_cores[rows]
        type_names = sorted(self._types, key=self._types.__getitem__)
        type_ok = np.array(
            [
                (not options.use_types or any(t in name for t in options.use_types))
                and not any(t in name for t in options.nouse_types)
                for name in type_names
            ]
            or [True],
            dtype=np.bool_,
        )
        mode_names = sorted(self._modes, key=self._modes.__getitem__)
        mode_ok = np.array(
            [options.vgpu_mode is None or mode in options.vgpu_mode for mode in mode_names] or [True],
            dtype=np.bool_,
        )
        memory: Any = need.memory if need.memory is not None else total_mem * (need.memory_percent or 0) // 100
        cores = need.cores
        mig = self.mig[rows]
        shared = ~mig
        conditions = [
            ~present,
            ~self.healthy[rows],
            self.cordoned[rows],
            ~(type_ok[self.type_id[rows]] & mode_ok[self.mode_id[rows]]),
            used >= count,
            # fit.py: a card a mutex pod holds takes no one; a 100-core (shared cards) or mutex pod needs no tenant
            self.exclusive[rows] | (np.full(present.shape, options.mutex) | (shared & (cores >= 100))) & (used > 0),
            shared & (total_mem - self.used_mem[rows] < memory),
            shared & (total_cores - used_cores < cores),
            shared & np.full(present.shape, cores == 0) & (used_cores >= total_cores),
            mig & (self.mig_free[rows] < memory),
        ]
        return np.select(conditions, [_ABSENT, *_CODES], default=_FIT)

    def fit_masks(self, names: Sequence[str], request: PodRequest) -> list[int | None]:
        """Per name, the cards the request's one GPU container fits on as a bit mask (bit i: the i-th card), None
        for an unknown or unregistered node. Only when :meth:`supports`."""
        known, rows, _ = self.rows(names)
        if not known:
            return [None] * len(names)
        fits = self._codes(rows, request) == _FIT
        masks = (fits.astype(np.int64) << np.arange(fits.shape[1], dtype=np.int64)).sum(axis=1)
        registered = self.registered[rows]
        by_name = dict(zip(known, np.where(registered, masks, -1).tolist(), strict=True))
        return [None if (m := by_name.get(name, -1)) < 0 else m for name in names]

    def largest_card_mem(self) -> int:
        """An upper bound of any node's card memory (MiB): rows of removed nodes may still count (quota.py)."""
        return int(self.total_mem.max()) if self.total_mem.size else 0

    def card_mem_range(self, names: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
        """The known ``names`` with the memory (MiB) of their smallest and largest card (0 without cards)."""
        known, rows, _ = self.rows(names)
        if not known:
            return [], [], []
        mem, present = self.total_mem[rows], self.present[rows]
        high = np.where(present, mem, 0).max(axis=1)
        low = np.where(present, mem, high[:, None]).min(axis=1)
        return known, low.tolist(), high.tolist()

    @staticmethod
    def _word(shape: tuple[int, ...], count: int) -> tuple[str, list[str]]:
        """fit_pod's message for a node of this shape (cards, fitting cards, failures per check) and its reasons."""
        n_cards, fitting = shape[0], shape[1]
        if count > n_cards:
            reason = FailureReason.NODE_INSUFFICIENT_DEVICE
            return f"{n_cards}/{n_cards} {reason.value}", [reason.value]
        parts = [(reason, n) for reason, n in zip(_CHECKS, shape[2:], strict=True) if n]
        if fitting:
            parts.append((FailureReason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST, fitting))
        parts.sort(key=lambda item: REASON_ORDER[item[0]])
        return ", ".join(f"{n}/{n_cards} {reason.value}" for reason, n in parts), [r.value for r, _ in parts]

    def priorities(self, names: Sequence[str], policy: Policy) -> list[int]:
        """node_priority for every name (0 for unknown or unregistered nodes)."""
        known, rows, _ = self.rows(names)
        if not known:
            return [0] * len(names)
        scaled = np.clip(np.rint(self.utilisation[rows] / 3 * MAX_PRIORITY), 0, MAX_PRIORITY).astype(np.int64)
        if policy is not Policy.BINPACK:
            scaled = MAX_PRIORITY - scaled
        usable = self.registered[rows] & (self.cards[rows] > 0)
        by_name = dict(zip(known, np.where(usable, scaled, 0).tolist(), strict=True))
        return [by_name.get(name, 0) for name in names]
