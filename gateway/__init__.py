"""vkit's gateway: an OpenAI-compatible FastAPI gateway in front of vLLM replicas.

A streamed request, top to bottom: :mod:`.accounting` (counted) -> :mod:`.admission`
(:class:`~gateway.admission.Admitted`, with its :mod:`.request_lease`) -> :mod:`.exchange`
(:mod:`.upstream_call`, :mod:`.relay`, :mod:`.billing`; its
:class:`~gateway.exchange.Outcome`).

Modules:

- :mod:`.app` -- ``create_app`` (the public routes) and ``create_admin_app``;
- :mod:`.running` -- :class:`~gateway.running.RunningGateway`, the running parts, typed;
- :mod:`.assembly` -- the running gateway built from its settings (key store, limiter);
- :mod:`.settings` -- the gateway's settings, modelled once;
- :mod:`.settings_env` -- those settings as ``VKIT_GATEWAY_*`` variables, the one writer;
- :mod:`.accounting` -- the middleware that counts every answer by key, model and status;
- :mod:`.admission` -- the gate: key, body, model, cap, limits -> the ``Admitted`` record;
- :mod:`.request_lease` -- one lease owning a request's in-flight slot and key lease;
- :mod:`.body` -- the client's JSON body, parsed once;
- :mod:`.oversized_body` -- a body over the size limit: the rest dropped before the 413;
- :mod:`.body_values` -- how many JSON values a body holds, bounded before it is parsed;
- :mod:`.body_fields` -- the body's fields described once: each route's reads, checks, schemas;
- :mod:`.openapi_bodies` -- the request bodies as documented in the OpenAPI schema;
- :mod:`.agent_apis` -- ``/v1/responses`` and ``/v1/messages``: what differs from chat, a row
  each (fields, cap field, prompt bound, stream end, error envelope);
- :mod:`.agent_prompt` -- the agent bodies' prompt bound (messages, items, blocks, tools);
- :mod:`.caps` -- token caps: ``max_tokens`` injected, clamped or refused;
- :mod:`.priority_class` -- a key's priority class as vLLM's request ``priority``, the
  client's own never earlier;
- :mod:`.prompt_tokens` -- a request's prompt tokens, counted before it goes upstream;
- :mod:`.utf8_length` -- UTF-8 lengths over normal forms (texts, JSON): the byte bound's B;
- :mod:`.chat_template` -- a model's chat template, rendered as vLLM renders it;
- :mod:`.prompt_budget` -- counting within a time budget, large bodies off the event loop;
- :mod:`.deadline` -- a time budget that long work checks as it goes; one timer on a task's waits;
- :mod:`.proxy_endpoint` -- the proxied routes' endpoint: gate, exchange, no Starlette layers;
- :mod:`.exchange` -- one request's exchange (the ASGI response) and its ``Outcome`` record;
- :mod:`.upstream_call` -- the upstream call: route, attempts, retries, first-byte timeout;
- :mod:`.spill` -- spill-over: a remote OpenAI-compatible endpoint of last resort, per key;
- :mod:`.spill_settings` -- the spill-over endpoint's settings;
- :mod:`.relay` -- the answer sent on to the client, under the idle, total and client-write
  deadlines;
- :mod:`.held_head` -- uvicorn's HTTP protocol, a response's head written with its body;
- :mod:`.usage_meter` -- the usage an answer or a stream reports, read on the bytes;
- :mod:`.event_meter` -- the usage of the agent APIs' streams (named events, no ``[DONE]``);
- :mod:`.billing` -- the tokens a request is billed, settled on its lease;
- :mod:`.client` -- the upstream HTTP client seam (aiohttp for https:// upstreams);
- :mod:`.raw_client` -- the client for http:// upstreams (asyncio + httptools), chosen by scheme;
- :mod:`.upstreams` -- the upstream pool, each upstream's readiness and what it serves;
- :mod:`.served_models` -- the names an upstream serves (base models, LoRA adapters);
- :mod:`.health` -- background readiness probing of the upstreams;
- :mod:`.errors` -- the one error hierarchy, rendered as the OpenAI envelope (Anthropic's on
  ``/v1/messages``);
- :mod:`.metrics` -- the gateway's Prometheus metrics on an injected registry;
- :mod:`.loop_metrics` -- lean counter, gauge, histogram for the request path (no locks);
- :mod:`.key_store` -- API keys at request time (authentication, reloads);
- :mod:`.keyfile` -- the keys file: YAML load and atomic save;
- :mod:`.limits` -- per-key limits (memory or Redis) and the gateway-wide in-flight bound;
- :mod:`.ledger` -- the usage ledger (SQLite or PostgreSQL), key budgets, dollars per key;
- :mod:`.routing` -- which replica each request goes to, holding, discovery.
"""
