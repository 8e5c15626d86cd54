"""``vkit up --deployment``: two tiny models and a LoRA adapter behind one gateway, each
request answered by its own group (shown by each replica's own metrics), and an adapter
loaded at run time reached through the gateway.

The models are the built-in tiny Llama and a copy of it served under another name; the
adapter is random weights for the tiny model's q_proj and v_proj, written as vLLM's LoRA
loader reads them (``adapter_config.json``: ``r``, ``lora_alpha``, ``target_modules``;
``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight`` of r x input and
``lora_B.weight`` of output x r; ``vllm/lora/peft_helper.py``, ``vllm/lora/utils.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import httpx
import openai
import pytest

from launcher.supervision.tiny_model import build_tiny_model
from tests.e2e.clients import sdk, wait_for
from tests.e2e.prom import sample_sum
from tests.e2e.test_up import spawn_vkit_up, stop_everything, wait_for_banner
from vkit.stack.ports import pick_free_ports
from vkit.stack.proctree import descendants, is_alive

pytestmark = pytest.mark.engine

RANK = 8


def write_random_lora(dest: Path, model_dir: Path, rank: int = RANK) -> Path:
    """A LoRA adapter of random weights on q_proj and v_proj of ``model_dir``'s Llama."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    outputs = {
        "q_proj": config["num_attention_heads"] * head_dim,
        "v_proj": config["num_key_value_heads"] * head_dim,
    }
    generator = torch.Generator().manual_seed(rank)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, out in outputs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = torch.randn(rank, hidden, generator=generator) * 0.01
            b = torch.randn(out, rank, generator=generator) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    dest.mkdir(parents=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(outputs),
        "bias": "none",
        "base_model_name_or_path": str(model_dir),
    }
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config))
    return dest


def replica_ports(pids: set[int]) -> dict[str, list[int]]:
    """Each served name's replica ports, read from the ``vkit launch`` command lines."""
    found: dict[str, list[int]] = {}
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode() for word in argv]
        if "launch" in words and "--served-model-name" in words and "--port" in words:
            name = words[words.index("--served-model-name") + 1]
            found.setdefault(name, []).append(int(words[words.index("--port") + 1]))
    return found


def successes(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sample_sum(text, "vllm:request_success_total")


def test_two_models_and_adapters_each_answered_by_their_own_group(tmp_path: Path) -> None:
    tiny = build_tiny_model(tmp_path / "models" / "tiny")
    second = tmp_path / "models" / "tiny-two"
    shutil.copytree(tiny, second)
    sql = write_random_lora(tmp_path / "lora" / "sql", tiny)
    late = write_random_lora(tmp_path / "lora" / "late", tiny)
    deployment = tmp_path / "two.yaml"
    deployment.write_text(
        "gpu: cpu\ngroups:\n"
        f"  - {{model: {tiny}, served_name: tiny, context: 256,\n"
        f"     adapters: [{{name: tiny-sql, source: {sql}, rank: {RANK}}}],\n"
        "     lora: {max_cpu_loras: 2, runtime_updates: true}}\n"
        f"  - {{model: {second}, served_name: tiny-two, context: 256}}\n"
    )
    port = pick_free_ports(1)[0]
    argv = ["--deployment", str(deployment), "--port", str(port)]
    proc, output = spawn_vkit_up([*argv, "--run-dir", str(tmp_path / "run")])
    children: set[int] = set()
    try:
        wait_for_banner(proc, output)
        key = re.search(r"API key:\s+(\S+)", output.text)
        assert key, output.text
        children |= descendants(proc.pid)
        ports = replica_ports(children)
        assert sorted(ports) == ["tiny", "tiny-two"], ports
        (tiny_port,), (two_port,) = ports["tiny"], ports["tiny-two"]
        client = sdk(f"http://127.0.0.1:{port}", key.group(1))
        for model, answering, idle in (
            ("tiny", tiny_port, two_port),
            ("tiny-two", two_port, tiny_port),
            ("tiny-sql", tiny_port, two_port),
        ):
            before = successes(answering), successes(idle)
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
            )
            assert reply.model == model
            assert (successes(answering), successes(idle)) == (before[0] + 1, before[1]), model
        loaded = httpx.post(
            f"http://127.0.0.1:{tiny_port}/v1/load_lora_adapter",
            json={"lora_name": "tiny-late", "lora_path": str(late)},
            timeout=60,
        )
        assert loaded.status_code == 200, loaded.text
        with pytest.raises(openai.NotFoundError):  # what no group serves
            client.chat.completions.create(
                model="nobody", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
            )
        # the gateway learns of it at its next probe of the replica's model list (5 s)
        wait_for(lambda: "tiny-late" in {m.id for m in client.models.list()}, 30, "the next probe")
        reply = client.chat.completions.create(
            model="tiny-late", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.model == "tiny-late"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, output.text
        survivors = [pid for pid in children if is_alive(pid)]
    finally:
        stop_everything(proc, children)
    assert survivors == []
