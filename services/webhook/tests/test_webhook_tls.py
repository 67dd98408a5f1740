"""Certificate hot reload over real TLS: certificates are made at test time with trustme."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
import trustme
from aiohttp import web
from hami_webhook.adapters.tls import CertificateFiles, ReloadingServerContext, TLSConfigError, build_server_context
from hami_webhook.app.server import create_app
from hami_webhook.core.policy import MutationPolicy


class SecretVolume:
    """Files laid out like a kubelet Secret volume: tls.crt -> ..data/tls.crt, ..data -> a versioned dir.

    ``publish`` swaps ``..data`` atomically, as the kubelet does when the Secret changes.
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.version = 0
        self.files = CertificateFiles(cert_file=root / "tls.crt", key_file=root / "tls.key")

    def publish(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.version += 1
        target = self.root / f"..v{self.version}"
        target.mkdir()
        (target / "tls.crt").write_bytes(cert_pem)
        (target / "tls.key").write_bytes(key_pem)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")


def leaf(ca: trustme.CA) -> tuple[bytes, bytes]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    return cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()


def der(cert_pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert_pem.decode())


def client_context(*cas: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in cas:
        ca.configure_trust(context)
    return context


async def served_certificate(port: int, context: ssl.SSLContext, server_hostname: str | None = None) -> bytes:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        peer: bytes = ssl_object.getpeercert(binary_form=True)
        return peer
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def volume(tmp_path: pathlib.Path) -> SecretVolume:
    return SecretVolume(tmp_path)


@dataclasses.dataclass
class Served:
    tls: ReloadingServerContext
    port: int
    reloads: list[bool]
    first_ca: trustme.CA


@pytest.fixture
async def server(volume: SecretVolume) -> AsyncIterator[Served]:
    first_ca = trustme.CA()
    volume.publish(*leaf(first_ca))
    reloads: list[bool] = []
    tls = ReloadingServerContext(volume.files, on_reload=reloads.append)
    runner = web.AppRunner(create_app(policy=MutationPolicy()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.listening_context)
    await site.start()
    try:
        yield Served(tls=tls, port=runner.addresses[0][1], reloads=reloads, first_ca=first_ca)
    finally:
        await runner.cleanup()


async def test_new_certificate_is_served_after_the_files_change(server: Served, volume: SecretVolume) -> None:
    tls, port, reloads, first_ca = server.tls, server.port, server.reloads, server.first_ca
    second_ca = trustme.CA()
    new_cert, new_key = leaf(second_ca)
    both = client_context(first_ca, second_ca)

    before = await served_certificate(port, both)
    assert before != der(new_cert)

    watcher = asyncio.create_task(tls.watch(interval=0.05))
    try:
        volume.publish(new_cert, new_key)
        for _ in range(400):  # up to ~20 s on a loaded machine
            if await served_certificate(port, both) == der(new_cert):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the new certificate was not served after the files changed")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert reloads == [True]
    # Without SNI too (the apiserver dials IPs for url-based webhooks).
    assert await served_certificate(port, client_context(second_ca), server_hostname="127.0.0.1") == der(new_cert)
    # A client that trusts only the old CA is now refused: the old certificate is really gone.
    with pytest.raises(ssl.SSLCertVerificationError):
        await served_certificate(port, client_context(first_ca))
    # HTTPS requests work end to end on the new certificate.
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"https://localhost:{port}/healthz", ssl=client_context(second_ca))
        assert resp.status == 200


async def test_mismatched_pair_keeps_the_previous_certificate(server: Served, volume: SecretVolume) -> None:
    tls, port, reloads, first_ca = server.tls, server.port, server.reloads, server.first_ca
    before = await served_certificate(port, client_context(first_ca))
    other_cert, _ = leaf(trustme.CA())
    _, other_key = leaf(trustme.CA())
    volume.publish(other_cert, other_key)  # certificate and key do not belong together
    assert tls.check() is False
    assert reloads == [False]
    assert await served_certificate(port, client_context(first_ca)) == before
    # No second attempt (and no second error) until the files change again.
    assert tls.check() is False
    assert reloads == [False]
    good_cert, good_key = leaf(first_ca)
    volume.publish(good_cert, good_key)
    assert tls.check() is True
    assert reloads == [False, True]
    assert await served_certificate(port, client_context(first_ca)) == der(good_cert)


def test_unchanged_files_are_not_reloaded(volume: SecretVolume) -> None:
    volume.publish(*leaf(trustme.CA()))
    tls = ReloadingServerContext(volume.files)
    assert tls.check() is False
    assert tls.reloads == 0


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("garbage", "cannot load certificate"),
        ("mismatch", "the key must belong to the certificate"),
    ],
)
def test_unusable_files_raise_a_clear_error(tmp_path: pathlib.Path, setup: str, expected: str) -> None:
    files = CertificateFiles(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")
    cert, key = leaf(trustme.CA())
    if setup == "garbage":
        files.cert_file.write_bytes(b"not a certificate")
        files.key_file.write_bytes(key)
    elif setup == "mismatch":
        files.cert_file.write_bytes(cert)
        files.key_file.write_bytes(leaf(trustme.CA())[1])
    with pytest.raises(TLSConfigError, match=expected):
        build_server_context(files)
