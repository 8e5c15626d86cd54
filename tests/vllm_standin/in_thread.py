"""A stand-in server on an event loop of its own in a thread, for synchronous tests (NGINX
in front, blocking clients): :class:`InThread`, :func:`standin_in_thread`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Generic, Protocol, TypeVar

from tests.vllm_standin.script import Script
from tests.vllm_standin.server import ScriptedUpstream


class AsyncServer(Protocol):
    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


ServerT = TypeVar("ServerT", bound=AsyncServer)


class InThread(Generic[ServerT]):
    """A server (:class:`ScriptedUpstream`, :class:`RawUpstream`) on an event loop of its
    own in a thread, for synchronous tests: ``with InThread(server) as server:``. Stopped
    when the block ends, or before by :meth:`stop` (a replica that dies: its port closes)."""

    def __init__(self, server: ServerT) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None  # while it runs

    def __enter__(self) -> ServerT:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._run(self._loop, self.server.__aenter__())
        except BaseException:
            self.stop()
            raise
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            self._run(loop, self.server.__aexit__(None, None, None))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            loop.close()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, step: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(step, loop).result(10)


def standin_in_thread(
    script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> InThread[ScriptedUpstream]:
    """The stand-in in a thread, for synchronous clients: ``with standin_in_thread(s) as up:``."""
    return InThread(ScriptedUpstream(script, host=host, port=port))
