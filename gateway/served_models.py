"""The names each upstream serves, read from its ``/v1/models`` answer: base models and LoRA
adapters. Pure.

vLLM lists every served base model as a card without a ``parent``, and every LoRA adapter it
holds -- named by ``--lora-modules`` or loaded at run time (``POST /v1/load_lora_adapter``)
-- as a card whose ``parent`` is the base model's name and whose ``root`` is the adapter's
path (vLLM 0.32, ``OpenAIServingModels.show_available_models``). A request names either in
its ``model`` field. So the prober's look at ``/v1/models`` tells the gateway which replica
serves which name, adapters loaded at run time included, with nothing configured:

    >>> served = read_served(b'{"data": [{"id": "llama"}, {"id": "support", "parent": "llama"}]}')
    >>> sorted(served.names), served.bases
    (['llama', 'support'], frozenset({'llama'}))

:func:`listing` is the gateway's own ``GET /v1/models``: the cards of every upstream, each
name once, only the names a key may use.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.supervision.readiness import model_cards

Card = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ServedModels:
    """One upstream's model cards as it listed them, and the names they carry."""

    cards: tuple[Card, ...] = ()
    names: frozenset[str] = field(default_factory=frozenset)

    @property
    def bases(self) -> frozenset[str]:
        """The base models: the cards without a ``parent`` (adapters name theirs)."""
        return frozenset(c["id"] for c in self.cards if not c.get("parent"))


NOTHING = ServedModels()


def read_served(body: bytes | None) -> ServedModels | None:
    """The cards of a ``/v1/models`` answer, or ``None`` when it is not a model list."""
    cards = model_cards(body) if body is not None else None
    if cards is None:
        return None
    return ServedModels(tuple(cards), frozenset(c["id"] for c in cards))


def listing(served: Iterable[ServedModels], allowed: Collection[str] = ()) -> dict[str, Any]:
    """An OpenAI model list of every name in ``served`` (the first card of each name), only
    those in ``allowed`` when it names any."""
    seen: set[str] = set()
    data: list[Card] = []
    for models in served:
        for card in models.cards:
            name = card["id"]
            if name in seen or (allowed and name not in allowed):
                continue
            seen.add(name)
            data.append(card)
    return {"object": "list", "data": data}
