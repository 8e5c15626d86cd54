"""The vLLM stand-in: one fake vLLM server for every test that needs one.

:class:`ScriptedUpstream` answers as vLLM's OpenAI-compatible server does, on a real
loopback socket (aiohttp): ``GET /health``, ``GET /v1/models`` (behind ``--api-key`` when
the script names one, as vLLM guards its ``/v1`` paths), ``GET /metrics`` (the scheduler
gauges a load-aware router reads, and the token counters, which move as it answers), and
chat completions, completions, embeddings and the agent APIs (``/v1/responses``,
``/v1/messages``), whole or streamed, with ``usage`` as vLLM sends it. What it answers is
a :class:`Script` that a test changes between requests; its
faults (statuses, a slow first byte or health answer, a stalled or broken stream, no
usage, a replica that is down, an engine hung mid-step whose ``/health`` still says 200)
are options of the script, and a replica behind a balancer can name itself in its answers:

    async with ScriptedUpstream(Script(chunks=8, chunk_delay=0.05)) as upstream:
        ...  # point the gateway at upstream.url; upstream.bodies holds what it was sent

    with standin_in_thread(Script(api_key="k", models=["tiny-llama"])) as upstream:
        httpx.get(f"{upstream.url}/v1/models", headers={"Authorization": "Bearer k"})

    with standin_in_thread(Script(name="a")) as replica:  # NGINX in front: {"replica": "a"}
        ...

For answers no HTTP library would send (a dropped or reset connection, silence, exact
bytes), :class:`RawUpstream` serves a bare TCP socket; :class:`WholeAnswer` is an answer
already in memory, for fake clients that stand in for a replica without any socket.

Its modules:

- ``script``: :class:`Script` (what to answer) and :class:`WholeAnswer`;
- ``server``: :class:`ScriptedUpstream`, the aiohttp server that follows the script;
- ``agent_answers``: what vLLM answers on ``/v1/responses`` and ``/v1/messages`` (whole,
  streamed as named events, errors), which the server writes;
- ``raw``: :class:`RawUpstream` and the raw answers (:func:`http_answer`,
  :func:`sse_answer`, :func:`endless_sse`, :func:`healthy_raw_answers`,
  ``DROP``/``RESET``/``SILENT``);
- ``in_thread``: :class:`InThread` and :func:`standin_in_thread`, any of the servers on an
  event loop of its own in a thread, for synchronous tests.

All run in the test's process (the unit tier allows that); none starts a process.
Stand-ins for vLLM as a *process* (start-up errors and exit codes, an engine that hangs and
ignores SIGTERM) are another thing: ``tests/launcher/supervision/fake_engine.py`` and the
engine script of ``tests/deploy/test_vllm_supervisor.py``.

``bench/upstream.py`` stays a stand-alone script of its own: the benchmarks run it as a
separate process pinned to one CPU, with the standard library only, so that it costs far
less than the proxy under test.
"""

from tests.vllm_standin.in_thread import InThread, standin_in_thread
from tests.vllm_standin.raw import (
    DROP,
    RESET,
    SILENT,
    Endless,
    RawAnswer,
    RawRequest,
    RawUpstream,
    endless_sse,
    healthy_raw_answers,
    http_answer,
    sse_answer,
)
from tests.vllm_standin.script import Script, WholeAnswer
from tests.vllm_standin.server import ScriptedUpstream

__all__ = [
    "DROP",
    "RESET",
    "SILENT",
    "Endless",
    "InThread",
    "RawAnswer",
    "RawRequest",
    "RawUpstream",
    "Script",
    "ScriptedUpstream",
    "WholeAnswer",
    "endless_sse",
    "healthy_raw_answers",
    "http_answer",
    "sse_answer",
    "standin_in_thread",
]
