"""The text ``vkit up`` prints once the stack is ready: URL, key, and examples."""

from __future__ import annotations

from textwrap import dedent

from vkit.stack.restarts import RestartPolicy


def render_banner(
    url: str,
    api_key: str,
    model: str,
    replicas: int,
    restarts: RestartPolicy | None = None,
    *,
    admin_url: str | None = None,
    front: str = "NGINX",
) -> str:
    """A copy-paste-ready summary for curl and the OpenAI Python SDK; ``admin_url`` is the
    gateway's admin listener (``/metrics`` for Prometheus, ``/readyz`` with upstream states);
    ``front``: what routes across the replicas (NGINX, or the gateway's aware router)."""
    policy = restarts or RestartPolicy()
    text = dedent(
        f"""\
        vkit is up: {replicas} replica(s) behind {front}, gateway at {url}

          URL:     {url}/v1
          API key: {api_key}
          Model:   {model}

        curl:
          curl {url}/v1/chat/completions \\
            -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \\
            -d '{{"model": "{model}", "max_tokens": 32,
                 "messages": [{{"role": "user", "content": "Hello"}}]}}'

        OpenAI Python SDK:
          from openai import OpenAI
          client = OpenAI(base_url="{url}/v1", api_key="{api_key}")
          reply = client.chat.completions.create(
              model="{model}", messages=[{{"role": "user", "content": "Hello"}}], max_tokens=32
          )
          print(reply.choices[0].message.content)

        A replica that crashes is started again (after {policy.first_delay_s:g} s, doubling up to
        {policy.max_delay_s:g} s); until one is ready the gateway answers 503 with Retry-After.
        Press Ctrl-C to stop everything.
        """
    )
    if admin_url is None:
        return text
    metrics = f"  Metrics: {admin_url}/metrics  (upstream states: {admin_url}/readyz)\n"
    head, model_line, rest = text.partition(f"  Model:   {model}\n")
    return head + model_line + metrics + rest
