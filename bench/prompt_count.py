"""How close the gateway's prompt count is to vLLM's own ``usage.prompt_tokens``, and what
counting costs.

    .venv/bin/python bench/prompt_count.py        # builds the tiny model, starts one CPU replica
    .venv/bin/python bench/prompt_count.py --base-url http://127.0.0.1:8000 --model-dir DIR

Sends every shape of :func:`prompt_shapes` (short, long, unicode, many messages, a system
prompt, content parts, chat options, token arrays, batch prompts) to the replica with
``max_tokens`` 1, one at a time, and compares its ``usage.prompt_tokens`` with the
tokenizer counter's and the byte bound's count: the worst over- and under-count (tokens
and %), for all prompts and for those of 100 tokens or more. Then a micro-benchmark: CPU
microseconds of ``parse_body`` per request with each counter, for a few body sizes.
Without ``--base-url`` it starts ``vkit launch --cpu`` on a free loopback port (ready
within ``--ready-timeout`` seconds, stopped at the end). ``tests/gateway/
test_engine_prompt_count.py`` asserts the same numbers against the test replicas.

    .venv/bin/python bench/prompt_count.py --hostile [--model-dir DIR]   # no replica needed

times the hostile bodies of :func:`hostile_bodies` (each under the 4 MiB body limit): the
tokenizer's full count, the gateway's count within its budget
(:class:`gateway.prompt_budget.CountBudget`, default settings) and the byte bound's; then
CPU microseconds per small body of ``parse_body`` against the gateway's budgeted path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.body import parse_body, parse_fields
from gateway.prompt_budget import CountBudget
from gateway.prompt_tokens import ByteBound, PromptCounter, TokenizerCounter
from gateway.settings import TokenizerSettings

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-llama"
LONG_TOKENS = 100  # the target: at most 25% over from here on
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Continuous batching keeps the accelerator busy while the KV cache holds the context.",
    "Hello! How can I help you today?",
    "vkit deploys vLLM behind a gateway with keys, limits and metrics.",
]
UNICODE = [
    "你好，世界！这是一个测试。",
    "こんにちは、元気ですか？",
    "안녕하세요 세계",
    "🎉🚀👩‍👩‍👧‍👦🇫🇷",
    "مرحبا بالعالم",
    "e\u0301 café naïve ﬁ ﷺ क़ Å",
    "Ünïcödé ßtraße Ωmega",
]


@dataclass(frozen=True)
class Shape:
    name: str
    path: str  # /v1/chat/completions or /v1/completions
    body: dict[str, Any]


@dataclass(frozen=True)
class Row:
    shape: Shape
    real: int  # vLLM's usage.prompt_tokens
    counted: Mapping[str, int]  # counter name -> its count


@dataclass(frozen=True)
class Summary:
    prompts: int
    worst_over: int
    worst_over_pct: float
    worst_under: int  # tokens below the real count (0: never under)
    worst_under_pct: float


def _words(rng: random.Random, count: int) -> str:
    vocabulary = " ".join(SENTENCES).replace(".", "").replace("!", "").split()
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def _chat(name: str, messages: list[dict[str, Any]], **extra: Any) -> Shape:
    body = {"model": MODEL, "messages": messages, "max_tokens": 1, **extra}
    return Shape(name, "/v1/chat/completions", body)


def _completion(name: str, prompt: Any, **extra: Any) -> Shape:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, **extra}
    return Shape(name, "/v1/completions", body)


def prompt_shapes(seed: int = 0) -> list[Shape]:
    """Prompts of every kind the gateway counts, each under the tiny model's 2048 tokens."""
    rng = random.Random(seed)
    user = [{"role": "user", "content": "Tell me a story."}]
    shapes = [
        _chat(f"chat short {text!r}", [{"role": "user", "content": text}])
        for text in ("hi", "?", "Count", "Tell me a story.", "")
    ]
    shapes += [
        _chat(f"chat {n} words", [{"role": "user", "content": _words(rng, n)}])
        for n in (20, 60, 150, 400, 700)
    ]
    shapes += [
        _chat(f"chat unicode {i} x{reps}", [{"role": "user", "content": text * reps}])
        for i, text in enumerate(UNICODE)
        for reps in (1, 12)
    ]
    shapes += [
        _chat("chat system + user", [{"role": "system", "content": "You are terse."}, *user]),
        _chat(
            "chat long system + user",
            [{"role": "system", "content": " ".join(SENTENCES * 6)}, *user],
        ),
        _chat("chat special tokens in text", [{"role": "user", "content": "</s><|user|> <s>"}]),
        _chat(
            "chat content parts",
            [{"role": "user", "content": [{"type": "text", "text": s} for s in SENTENCES]}],
        ),
        _chat("chat no generation prompt", user, add_generation_prompt=False),
        _chat(
            "chat continue final message",
            [*user, {"role": "assistant", "content": "Once upon a time"}],
            add_generation_prompt=False,
            continue_final_message=True,
        ),
        _chat("chat add_special_tokens", user, add_special_tokens=True),
        _chat("chat n=2", user, n=2),
    ]
    for turns in (4, 10, 30):
        roles = ["user", "assistant"]
        messages = [
            {"role": roles[i % 2], "content": rng.choice(SENTENCES + UNICODE)} for i in range(turns)
        ]
        shapes.append(_chat(f"chat {turns} messages", messages))
    shapes += [
        _completion(f"prompt {text[:12]!r}", text)
        for text in ("hi", "Count", SENTENCES[0], *UNICODE[:4])
    ]
    shapes += [_completion(f"prompt {n} words", _words(rng, n)) for n in (100, 500)]
    shapes += [
        _completion(f"prompt {n} token ids", [rng.randrange(6, 500) for _ in range(n)])
        for n in (1, 50, 600)
    ]
    shapes += [
        _completion("prompt batch of 3 texts", [SENTENCES[0], UNICODE[0], _words(rng, 80)]),
        _completion("prompt batch of 3 id lists", [[7, 8, 9], [10] * 40, list(range(6, 206))]),
        _completion("prompt n=2", SENTENCES[1], n=2),
        _completion("prompt without special tokens", SENTENCES[1], add_special_tokens=False),
    ]
    return shapes


async def measure(
    base_url: str, shapes: list[Shape], counters: Mapping[str, PromptCounter]
) -> list[Row]:
    """One request per shape (sequential, bounded by a per-request timeout)."""
    rows = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as client:
        for shape in shapes:
            response = await client.post(shape.path, json=shape.body)
            if response.status_code != 200:
                raise RuntimeError(f"{shape.name}: {response.status_code} {response.text}")
            real = response.json()["usage"]["prompt_tokens"]
            counted = {name: c.count(shape.body) for name, c in counters.items()}
            rows.append(Row(shape, real, counted))
    return rows


def summarize(rows: list[Row], counter: str, min_tokens: int = 0) -> Summary:
    chosen = [r for r in rows if r.real >= min_tokens]
    over = [(r.counted[counter] - r.real, (r.counted[counter] - r.real) / r.real) for r in chosen]
    return Summary(
        prompts=len(chosen),
        worst_over=max((o for o, _ in over), default=0),
        worst_over_pct=100 * max((p for _, p in over), default=0.0),
        worst_under=max((-o for o, _ in over if o < 0), default=0),
        worst_under_pct=100 * max((-p for _, p in over if p < 0), default=0.0),
    )


def cpu_us_per_parse(raw: bytes, counter: PromptCounter | None, repeat: int) -> float:
    """CPU microseconds of one ``parse_body`` (JSON and counting), averaged."""
    parse_body(raw, counter)  # warm caches
    start = time.process_time()
    for _ in range(repeat):
        parse_body(raw, counter)
    return (time.process_time() - start) / repeat * 1e6


def cost_table(counters: Mapping[str, PromptCounter | None], repeat: int = 2000) -> list[str]:
    rng = random.Random(1)
    bodies = {
        "chat, 1 short message": _chat("", [{"role": "user", "content": "Tell me a story."}]),
        "chat, ~100 tokens": _chat("", [{"role": "user", "content": _words(rng, 40)}]),
        "chat, ~1000 tokens": _chat("", [{"role": "user", "content": _words(rng, 400)}]),
        "chat, 10 messages": _chat(
            "",
            [
                {"role": ("user", "assistant")[i % 2], "content": SENTENCES[i % 4]}
                for i in range(10)
            ],
        ),
        "completion, 600 token ids": _completion("", list(range(6, 606))),
    }
    lines = ["| body | " + " | ".join(f"{n} us" for n in counters) + " |"]
    lines.append("|---|" + "---|" * len(counters))
    for label, shape in bodies.items():
        raw = json.dumps(shape.body).encode()
        costs = [cpu_us_per_parse(raw, c, repeat) for c in counters.values()]
        lines.append(f"| {label} | " + " | ".join(f"{us:.1f}" for us in costs) + " |")
    return lines


def hostile_bodies() -> dict[str, dict[str, Any]]:
    """Bodies whose count costs the most per byte, each under 4 MiB."""
    schema = {"type": "object", "enum": list(range(600_000))}
    return {
        "600k-integer tool schema": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
        },
        "63 prompts of 65,536 chars": {"model": MODEL, "prompt": ["ab c" * 16384] * 63},
        "120k one-char messages": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "a"}] * 120_000,
        },
    }


def _seconds(job: Any) -> float:
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


def hostile_table(counter: PromptCounter, budget: CountBudget) -> list[str]:
    lines = ["| body | MB | tokenizer, full s | gateway (budget) s | byte bound s |"]
    lines.append("|---|---|---|---|---|")
    for label, body in hostile_bodies().items():
        size = len(json.dumps(body)) / 1e6
        full = _seconds(lambda body=body: counter.count(body))
        budgeted = _seconds(lambda body=body: budget.within(counter, body))
        bound = _seconds(lambda body=body: ByteBound().count(body))
        lines.append(f"| {label} | {size:.2f} | {full:.3f} | {budgeted:.3f} | {bound:.3f} |")
    return lines


def cpu_us_per_budgeted_parse(
    raw: bytes, counter: PromptCounter, budget: CountBudget, repeat: int
) -> float:
    """CPU microseconds of the gateway's path: the fields, then the count within budget."""

    def once() -> None:
        body = parse_fields(raw)
        body.count_prompt(budget.within(counter, body.data))

    once()
    start = time.process_time()
    for _ in range(repeat):
        once()
    return (time.process_time() - start) / repeat * 1e6


def budget_cost_table(counter: PromptCounter, repeat: int = 2000) -> list[str]:
    budget = CountBudget()
    rng = random.Random(1)
    bodies = {
        "chat, 1 short message": [{"role": "user", "content": SENTENCES[0]}],
        "chat, ~1000 tokens": [{"role": "user", "content": _words(rng, 400)}],
        "chat, 10 messages": [
            {"role": ("user", "assistant")[i % 2], "content": SENTENCES[i % 4]} for i in range(10)
        ],
    }
    lines = ["| body | parse_body us | parse_fields + CountBudget.within us |", "|---|---|---|"]
    for label, messages in bodies.items():
        raw = json.dumps({"model": MODEL, "messages": messages}).encode()
        before = cpu_us_per_parse(raw, counter, repeat)
        after = cpu_us_per_budgeted_parse(raw, counter, budget, repeat)
        lines.append(f"| {label} | {before:.1f} | {after:.1f} |")
    return lines


def report(rows: list[Row]) -> list[str]:
    head = "| counter | prompts | worst over | worst under "
    lines = [head + "| prompts >= 100 | worst over | worst under |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name in rows[0].counted:
        every, long = summarize(rows, name), summarize(rows, name, LONG_TOKENS)
        cells = [name]
        for s in (every, long):
            cells += [
                str(s.prompts),
                f"+{s.worst_over} (+{s.worst_over_pct:.0f}%)",
                f"{s.worst_under} ({s.worst_under_pct:.0f}%)",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def details(rows: list[Row]) -> list[str]:
    names = list(rows[0].counted)
    lines = ["| shape | vLLM | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(
            f"| {r.shape.name} | {r.real} | " + " | ".join(str(r.counted[n]) for n in names) + " |"
        )
    return lines


@contextmanager
def tiny_replica(ready_timeout: float) -> Iterator[tuple[str, Path]]:
    """Build the tiny model and serve it with one ``vkit launch --cpu`` on loopback."""
    from launcher.supervision.readiness import ReadinessCheck
    from launcher.supervision.readiness_probe import VllmProbe
    from launcher.supervision.tiny_model import build_tiny_model
    from vkit.stack.ports import free_port

    model_dir = build_tiny_model(ROOT / ".vkit" / "models" / MODEL)
    port = free_port()
    argv = [sys.executable, "-m", "vkit", "launch", "--cpu", "--model", str(model_dir)]
    argv += ["--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--max-model-len", "2048", "--enforce-eager"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    log = Path(tempfile.mkdtemp(prefix="prompt-count-")) / "replica.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        probe = VllmProbe(url, ReadinessCheck.of(models=[MODEL]))
        deadline = time.monotonic() + ready_timeout
        while not probe.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not get ready; see {log}")
            time.sleep(1.0)
        yield url, model_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="a running vLLM replica of the tiny model")
    parser.add_argument("--model-dir", type=Path, help="its model directory")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--hostile", action="store_true", help="time hostile bodies only")
    args = parser.parse_args()
    if args.hostile:
        from launcher.supervision.tiny_model import build_tiny_model

        model_dir = args.model_dir or build_tiny_model(ROOT / ".vkit" / "models" / MODEL)
        counter = TokenizerCounter.load(model_dir, TokenizerSettings())
        print("\n".join(hostile_table(counter, CountBudget())))
        print()
        print("\n".join(budget_cost_table(counter)))
        return 0

    def run(url: str, model_dir: Path) -> None:
        counters: dict[str, PromptCounter] = {
            "tokenizer": TokenizerCounter.load(model_dir, TokenizerSettings()),
            "byte bound": ByteBound(),
        }
        rows = asyncio.run(measure(url, prompt_shapes(), counters))
        print("\n".join(details(rows)))
        print()
        print("\n".join(report(rows)))
        print()
        cost_counters = {"no counter (byte bound)": None, "tokenizer": counters["tokenizer"]}
        print("\n".join(cost_table(cost_counters)))

    if args.base_url:
        if args.model_dir is None:
            parser.error("--base-url needs --model-dir")
        run(args.base_url, args.model_dir)
    else:
        with tiny_replica(args.ready_timeout) as (url, model_dir):
            run(url, model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
