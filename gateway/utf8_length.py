"""UTF-8 lengths, the most over a text's normal forms: the ``B`` of the byte bound.

- :func:`text_bytes`: a text's UTF-8 length, the most over it as given, NFD and NFKD;
- :func:`json_bytes`: the same of a JSON value dumped as a chat template may dump it
  (indented by 4), counted in short steps.

:class:`gateway.prompt_tokens.ByteBound` has the proof that rests on them.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any


def text_bytes(text: str) -> int:
    """UTF-8 bytes of ``text``, the most over it as given, NFD and NFKD (ByteBound's B)."""
    if text.isascii():
        return len(text)  # ASCII is the same in every normalization form
    return max(
        len(form.encode("utf-8", "surrogatepass"))
        for form in (text, unicodedata.normalize("NFD", text), unicodedata.normalize("NFKD", text))
    )


JSON_BATCH = 4096  # scalars per C dump: ~1 ms each, the GIL free for others in between


def json_bytes(value: object, indent: int = 4) -> int:
    """:func:`text_bytes` of ``json.dumps(value, ensure_ascii=False, indent=4)``, an upper
    bound of it past :data:`JSON_BATCH` scalars, in short steps: json's indenting encoder is
    pure Python (0.6 s for a 600k-item schema) and its compact C one holds the GIL for one
    long call (0.05-0.3 s). The structure (brackets, commas, ``": "``, indentation) is
    counted walking the containers; the scalars and keys are dumped by the C encoder
    :data:`JSON_BATCH` at a time. The structure is ASCII, the same length in every
    normalization form, so within one batch the count is exact; over several it is the sum
    of each batch's most over the forms, no less than the whole's. ``None`` (an absent
    field) counts 0."""
    if value is None:
        return 0
    total = 0
    scalars: list[Any] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, dict | list):
            scalars.append(item)
            continue
        size = len(item)
        total += 2  # the brackets
        if size:  # commas, then a newline and indentation before each item and the closing
            total += size - 1 + size * (1 + indent * (level + 1)) + 1 + indent * level
        children: Any = item
        if isinstance(item, dict):
            total += 2 * size  # ": " after each key
            scalars.extend(item)
            children = item.values()
        kinds = set(map(type, children))  # in C: a schema's 600k integers, ~10 ms
        if dict in kinds or list in kinds:
            for child in children:
                if isinstance(child, dict | list):
                    stack.append((child, level + 1))
                else:
                    scalars.append(child)
        else:
            scalars.extend(children)
    for start in range(0, len(scalars), JSON_BATCH):
        batch = scalars[start : start + JSON_BATCH]
        dumped = json.dumps(batch, ensure_ascii=False, separators=(",", ": "))
        total += text_bytes(dumped) - 2 - (len(batch) - 1)  # less its brackets and commas
    return total
