"""The Kubernetes API plumbing the services share (extra ``kube``: kubernetes-asyncio, tenacity; the client setup
and the error type are :mod:`hami_shared.service.kube`'s).

The services read and write bodies as plain JSON (``_preload_content=False``): they need a few fields of each
object, and deserialising every pod into models costs more than their decisions. kubernetes-asyncio checks the
HTTP status only when it preloads the body, so every raw call goes through :func:`checked` (or :func:`read_json` /
:func:`discard`), which turns a non-2xx answer into an ``ApiException`` carrying the server's ``Status`` body.

:class:`Reflector` is the list-then-watch loop of one resource kind: list (paged), then watch from the list's
resourceVersion, again from the last one seen when the server ends the stream (bookmarks keep it fresh); on 410
Gone, list again; any other error is retried with exponential backoff and jitter (tenacity). ``on_list`` gets a
list whole, once every page has arrived, so the callback can swap its cache in one step; ``digest`` turns each
object into the caller's compact value as its page arrives, so only one page of raw JSON is alive at a time (a
list of 40,000 pods held as JSON is hundreds of MiB, a peak the process keeps as resident memory). ``synced``
("the callbacks hold a complete list and the watch goes on from it") is set after ``on_list`` returns and
cleared when a list fails (the call, a malformed page, ``on_list`` raising), and the list is retried. Watch
events go to ``on_event`` one at a time; one that raises, or whose object is not a JSON object, is logged and
skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from hami_shared import jsonio
from hami_shared.logging import get_logger

log = get_logger(__name__)


async def checked(call: Awaitable[Any]) -> Any:
    """Await a ``_preload_content=False`` call; its response, or ApiException on a non-2xx status."""
    response = await call
    if not 200 <= response.status < 300:
        try:
            body = await response.read()
        finally:
            response.release()
        exc = ApiException(status=response.status, reason=getattr(response, "reason", None) or "")
        exc.body = body.decode("utf-8", "replace")
        raise exc
    return response


async def read_json(call: Awaitable[Any]) -> Any:
    """Body of a ``_preload_content=False`` call as JSON, after the status check."""
    response = await checked(call)
    try:
        return jsonio.loads(await response.read())
    finally:
        response.release()


async def discard(call: Awaitable[Any]) -> None:
    """Run a ``_preload_content=False`` call for its effect only, after the status check."""
    (await checked(call)).release()


PAGE_SIZE = 500
WATCH_TIMEOUT_S = 300
RETRYABLE = (ApiException, OSError, asyncio.TimeoutError, ValueError)


class _Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class ListFailed(ValueError):
    """A list page was malformed or ``on_list`` refused the list: retried like any API error."""


ListCall = Callable[..., Awaitable[Any]]


class Reflector:
    """List+watch of one resource kind into callbacks. ``synced`` is set after a successful list and
    cleared when a list fails (module docstring)."""

    def __init__(
        self,
        *,
        kind: str,
        list_call: ListCall,
        on_list: Callable[[list[Any]], None],
        on_event: Callable[[str, Mapping[str, Any]], None],
        on_restart: Callable[[], None] = lambda: None,
        digest: Callable[[Any], Any] = lambda item: item,
    ) -> None:
        self.kind = kind
        self._list_call = list_call
        self._on_list = on_list
        self._digest = digest
        self._on_event = on_event
        self._on_restart = on_restart
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Never returns; cancel it to stop."""
        resource_version: str | None = None
        while True:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RETRYABLE),
                wait=wait_exponential_jitter(multiplier=0.5, max=30),
                before_sleep=self._log_retry,
                reraise=True,
            ):
                with attempt:
                    if resource_version is None:
                        resource_version = await self._list()
                    try:
                        resource_version = await self._watch(resource_version)
                    except _Gone:
                        log.info("watch_gone_relisting", kind=self.kind)
                        self._on_restart()
                        resource_version = None
                    except BaseException:
                        self._on_restart()
                        raise

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("watch_retry", kind=self.kind, attempt=state.attempt_number, error=repr(error))

    async def _list(self) -> str:
        try:
            items, resource_version = await self._list_pages()
            try:
                self._on_list(items)
            except Exception as exc:
                log.exception("list_handler_failed", kind=self.kind, count=len(items))
                raise ListFailed(f"the {self.kind} list could not be applied: {type(exc).__name__}") from exc
        except BaseException:
            # Whatever the callbacks hold now is not a fresh list: do not report synced until one is.
            self.synced.clear()
            raise
        self.synced.set()
        log.info("listed", kind=self.kind, count=len(items), resource_version=resource_version)
        return resource_version

    async def _list_pages(self) -> tuple[list[Any], str]:
        items: list[Any] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            body = await read_json(self._list_call(**kwargs))
            page = body.get("items") if isinstance(body, dict) else None
            metadata = body.get("metadata") if isinstance(body, dict) else None
            if not isinstance(page, list | None) or not isinstance(metadata, dict | None):
                raise ListFailed(f"the {self.kind} list page is not a list object")
            try:
                items.extend(map(self._digest, page or []))
            except Exception as exc:
                log.exception("list_digest_failed", kind=self.kind)
                raise ListFailed(f"the {self.kind} list could not be read: {type(exc).__name__}") from exc
            del body, page  # the raw page is garbage before the next one is read
            token = (metadata or {}).get("continue")
            if not token:
                return items, str((metadata or {}).get("resourceVersion", ""))
            if not isinstance(token, str):
                raise ListFailed(f"the {self.kind} list page has a non-string continue token")

    async def _watch(self, resource_version: str) -> str:
        try:
            response = await checked(
                self._list_call(
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    _preload_content=False,
                    _request_timeout=WATCH_TIMEOUT_S + 30,
                )
            )
        except ApiException as exc:
            if exc.status == 410:  # refused before the stream started: the version is too old as well
                raise _Gone() from exc
            raise
        try:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        resource_version = self._dispatch(line, resource_version)
        finally:
            response.release()
        return resource_version

    def _dispatch(self, line: bytes, resource_version: str) -> str:
        event = jsonio.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("object") or {}, dict):
            log.warning("watch_event_malformed", kind=self.kind, line=line[:200].decode("utf-8", "replace"))
            return resource_version
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        new_version = version if isinstance(version, str) and version else resource_version
        if kind != "BOOKMARK":
            try:
                self._on_event(str(kind), obj)
            except Exception:
                # One object we cannot digest must not stop the cache for every other one.
                log.exception("watch_event_failed", kind=self.kind, event_type=kind, version=new_version)
        return new_version
