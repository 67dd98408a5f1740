"""Server TLS context whose certificate follows the files on disk (hot reload without restart).

When cert-manager or a job rotates the Secret, the kubelet swaps the mounted files. The listening context's
SNI callback hands every new handshake the latest context; a reload builds a complete context first and
swaps it in only when certificate and key load and match, so a half-written pair never reaches a client.
Change detection polls ``stat`` of both files: cheap, works through Secret volume symlinks, no inotify.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import ssl
from collections.abc import Callable
from typing import Final

from hami_shared.logging import get_logger

log = get_logger(__name__)

MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and what to fix."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CertificateFiles:
    cert_file: pathlib.Path
    key_file: pathlib.Path


FileStamp = tuple[tuple[int, int, int, int], ...]


def build_server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server context with the pair loaded, or :class:`TLSConfigError`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_TLS_VERSION
    for path, what in ((files.cert_file, "certificate"), (files.key_file, "private key")):
        if not path.is_file():
            raise TLSConfigError(f"{what} file {path} does not exist or is not a file; give the PEM file's path")
    try:
        context.load_cert_chain(certfile=files.cert_file, keyfile=files.key_file)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot load certificate {files.cert_file} with key {files.key_file}: {exc.reason or exc}; "
            "both must be PEM, and the key must belong to the certificate"
        ) from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read {files.cert_file} / {files.key_file}: {exc.strerror or exc}") from exc
    return context


def stamp_files(files: CertificateFiles) -> FileStamp:
    """What identifies the current content of both files; changes when either is rewritten or swapped."""
    stamps = []
    for path in (files.cert_file, files.key_file):
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0, 0))
            continue
        stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class ReloadingServerContext:
    """Owns the listener's context and swaps certificates into it on change (event loop only);
    ``on_reload(ok)`` is told of every reload attempt."""

    def __init__(self, files: CertificateFiles, *, on_reload: Callable[[bool], None] | None = None) -> None:
        self._files = files
        self._on_reload = on_reload
        self._stamp = stamp_files(files)
        self._current = build_server_context(files)
        self.listening_context: Final = build_server_context(files)
        self.listening_context.sni_callback = self._select_context
        self.reloads = 0

    def _select_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: object
    ) -> None:
        # Called by OpenSSL for every ClientHello (with or without SNI), before the certificate is chosen.
        connection.context = self._current

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate was swapped in."""
        stamp = stamp_files(self._files)
        if stamp == self._stamp:
            return False
        # Remember the attempt even if it fails: a writer still busy with the pair changes the
        # stamp again when it finishes, which triggers the next attempt; no log storm meanwhile.
        self._stamp = stamp
        try:
            context = build_server_context(self._files)
        except TLSConfigError as exc:
            log.error("certificate_reload_failed", error=str(exc), serving="the previous certificate")
            if self._on_reload:
                self._on_reload(False)
            return False
        self._current = context
        self.reloads += 1
        log.info("certificate_reloaded", cert_file=str(self._files.cert_file), reloads=self.reloads)
        if self._on_reload:
            self._on_reload(True)
        return True

    async def watch(self, *, interval: float) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.check()
