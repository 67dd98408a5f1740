"""The plugin's container records on the host: ``<regions dir>/.records/<podUID>_<container>.json``.

The directory sits next to the per-container directories, not in one: kubelet mounts each container's own
directory into it, so no container sees or writes these files (mode 0700, root). Written to a temporary file
and renamed into place; read back at start, bounded, each one on its own (a bad file is logged and skipped).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from hami_shared.logging import get_logger

from hami_device_plugin.adapters import files
from hami_device_plugin.core.records import MAX_RECORD_BYTES, ContainerRecord, RecordError, decode_record, encode_record

log = get_logger(__name__)

RECORDS_DIR: Final = ".records"
SUFFIX: Final = ".json"


class RecordStore:
    def __init__(self, regions_dir: Path) -> None:
        self.dir = regions_dir / RECORDS_DIR

    def write(self, record: ContainerRecord) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files.publish_file(self.dir / f"{record.dir_name}{SUFFIX}", encode_record(record), 0o600, replace=True)

    def names(self) -> set[str]:
        """Container directory names that have a record file."""
        try:
            return {e.name[: -len(SUFFIX)] for e in os.scandir(self.dir) if e.name.endswith(SUFFIX)}
        except FileNotFoundError:
            return set()

    def load(self) -> dict[str, ContainerRecord]:
        out: dict[str, ContainerRecord] = {}
        for name in sorted(self.names()):
            path = self.dir / f"{name}{SUFFIX}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    data = os.read(fd, MAX_RECORD_BYTES + 1)
                finally:
                    os.close(fd)
                record = decode_record(data)
                if record.dir_name != name:
                    raise RecordError(f"file of {name} holds the record of {record.dir_name}")
            except (OSError, RecordError) as exc:
                log.warning("container_record_unreadable", path=str(path), error=str(exc)[:300])
                continue
            out[name] = record
        return out

    def remove(self, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"refusing to remove the record {name!r}: not a container directory name")
        with contextlib.suppress(OSError):
            os.unlink(self.dir / f"{name}{SUFFIX}")
