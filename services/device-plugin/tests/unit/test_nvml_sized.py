"""adapters/nvml.py ``_sized``: a pynvml list query asked again when a sample appears between pynvml's sizing call
and its real one (NVML_ERROR_INSUFFICIENT_SIZE), a bounded number of times."""

from __future__ import annotations

import pynvml
import pytest
from hami_device_plugin.adapters.nvml import SIZED_ATTEMPTS, _sized


def test_a_query_that_grew_between_the_calls_is_asked_again() -> None:
    calls: list[int] = []

    def query() -> list[int]:
        calls.append(1)
        if len(calls) < SIZED_ATTEMPTS:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        return [7]

    assert _sized(query) == [7]
    assert len(calls) == SIZED_ATTEMPTS


def test_a_query_that_never_fits_raises_after_the_last_attempt() -> None:
    calls: list[int] = []

    def query() -> list[int]:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)

    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        _sized(query)
    assert len(calls) == SIZED_ATTEMPTS


def test_other_nvml_errors_are_not_retried() -> None:
    calls: list[int] = []

    def query() -> list[int]:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    with pytest.raises(pynvml.NVMLError_NotFound):
        _sized(query)
    assert calls == [1]
