"""Fuzz (issue 16): 10,000 region files of any size and content through the monitor's region reader and its
scan. Nothing but the project's refusals (RegionFormatError, RegionRefusedError) comes out, memory stays bounded
(a file is never read beyond the region's fixed size), every write of the monitor stays inside the file, and the
monitor still reads a valid region afterwards.

Half the inputs are a valid region (the plugin's own writer) with random bytes written over any part of it (the
header, the device records, the process slots) and header words set to edge values, so they get past the size
check and into the parser; the other half are files of any size up to 2 GiB (sparse) with random content at
random places. Hypothesis draws one seed per input and the file is generated from it: drawing the bytes through
hypothesis itself cost 4 ms per input, the whole run ten times longer. The files live on a tmpfs, as regions do
on a node (a regions directory on tmpfs, deploy/README.md)."""

from __future__ import annotations

import os
import random
import resource
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hami_device_plugin.adapters import files
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.core import region
from hami_device_plugin.core.monitor import layout_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_monitor_trust import G0, MIB, monitor, record, write_region

NAME = "uid-f_c"
EXAMPLES = 10_000
HEADER_WORDS = (8, 12, 16, 24, 28, 32, 36, 40, 44, 48, 56, 64, 112, 116)
EDGE_VALUES = (0, 1, 2, 3, 4, 15, 16, 17, 63, 64, 192, 256, 1023, 1024, 4096, 8192, 2**31, 2**32 - 1)


@pytest.fixture(scope="module")
def regions_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="region-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        yield root
    finally:
        shutil.rmtree(root)


class _Fuzz:
    """The file under test, its valid image, and one monitor for every input (as the plugin's lives on)."""

    def __init__(self, root: Path) -> None:
        self.path = write_region(root, NAME, pid=100)
        self.valid = self.path.read_bytes()
        self.fd = os.open(self.path, os.O_RDWR)
        self.monitor: Monitor = monitor(root, {NAME: record(NAME, 1)})
        self.runs = 0

    def write(self, rng: random.Random) -> None:
        os.ftruncate(self.fd, 0)
        if rng.random() < 0.5:  # a region, changed
            os.pwrite(self.fd, self.valid, 0)
            for _ in range(rng.randrange(9)):
                offset = rng.randrange(region.REGION_SIZE)
                os.pwrite(self.fd, rng.randbytes(rng.randint(1, 64))[: region.REGION_SIZE - offset], offset)
            for _ in range(rng.randrange(5)):
                os.pwrite(self.fd, struct.pack("<I", rng.choice(EDGE_VALUES)), rng.choice(HEADER_WORDS))
        else:  # any size, any content
            size = rng.choice((rng.randrange(region.REGION_SIZE * 2), rng.randrange(2 << 30)))
            os.ftruncate(self.fd, size)
            for _ in range(rng.randrange(6)):
                os.pwrite(self.fd, rng.randbytes(rng.randrange(257)), rng.randrange(size + 1))


_STATE: dict[Path, _Fuzz] = {}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**64 - 1))
def test_any_region_file_is_read_or_refused_with_the_projects_error(regions_dir: Path, seed: int) -> None:
    if regions_dir not in _STATE:
        _STATE[regions_dir] = _Fuzz(regions_dir)
    fuzz = _STATE[regions_dir]
    fuzz.write(random.Random(seed))
    size_before = os.fstat(fuzz.fd).st_size
    handle = files.RegionHandle(str(fuzz.path))
    try:
        layout_problem(handle.read(bytearray()))
    except (region.RegionFormatError, files.RegionRefusedError):
        pass
    finally:
        handle.close()
    fuzz.monitor._scan_regions({G0: {100: 30}})
    assert os.fstat(fuzz.fd).st_size == size_before  # every write of the scan stayed inside the file
    fuzz.runs += 1


def test_the_fuzz_leaves_memory_bounded_and_the_monitor_reading(regions_dir: Path) -> None:
    """Runs after the fuzz (same module, in order): every input ran, the process grew by far less than one
    oversized file, and the same monitor still reads a valid region and signals it."""
    fuzz = _STATE[regions_dir]
    assert fuzz.runs >= EXAMPLES
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 512 * 1024  # KiB
    os.ftruncate(fuzz.fd, 0)
    os.pwrite(fuzz.fd, fuzz.valid, 0)
    os.close(fuzz.fd)
    other = write_region(regions_dir, "uid-o_c", pid=200)
    fuzz.monitor._records = {NAME: record(NAME, 1), "uid-o_c": record("uid-o_c", 1)}.get
    samples = fuzz.monitor._scan_regions({G0: {100: 30, 200: 20}})
    assert sorted(s.utilization_pct for s in samples) == [20, 30]
    for path in (fuzz.path, other):
        device = region.parse_region(path.read_bytes()).devices[0]
        assert device.contended
        assert device.limit_bytes == 1000 * MIB
