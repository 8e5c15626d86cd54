"""How many JSON values a body holds, read from its bytes before it is parsed. Pure.

Parsing a body and walking what it holds costs the event loop time per value, not per byte:
4 MiB of empty lists (1.4 million values) held it for seconds, a 4 MiB string for
milliseconds. :func:`check_values` refuses a body of more than ``limit`` values (400
``too_many_values``) at the cost of a few passes of C code over its bytes, so no body makes
the gateway parse more than ``limit`` values (``max_body_values``;
``docs/gateway-bodies.md#bounded-work`` has the measurements).

The count is :func:`values_upper_bound`: the ``,``, ``[`` and ``{`` outside strings, plus
one, less the empty arrays and objects. Every value but the first of an array or object
follows a comma, every first one follows its container's opening bracket, and the top value
is the one more: so for JSON the count is the body's values exactly (arrays, objects,
strings, numbers, ``true``, ``false``, ``null``; an object's keys are not counted, each is
beside a value that is). Most bodies are settled by counting those three bytes anywhere,
strings and empty containers included, which is never fewer; only a body with more of them
than ``limit`` is looked at outside its strings.
"""

from __future__ import annotations

from gateway.errors import InvalidRequest

_STRUCTURE = b",[{"
_WHITESPACE = b" \t\r\n"  # JSON's


def check_values(raw: bytes, limit: int) -> None:
    """Refuse (400) a body with more than ``limit`` values."""
    if _structure(raw) + 1 <= limit:  # counted with strings: never fewer than outside them
        return
    if values_upper_bound(raw, limit) > limit:
        raise InvalidRequest(
            f"the body holds more than {limit} JSON values (arrays, objects, strings, "
            "numbers); send fewer items or split the request",
            code="too_many_values",
        )


def values_upper_bound(raw: bytes, limit: int) -> int:
    """The values of the JSON body ``raw`` (the module docstring); once it is sure to be
    above ``limit``, possibly fewer (still above). Bytes that are not JSON give some number:
    the parser refuses them afterwards."""
    # An escape is a backslash and one more byte, so dropping each backslash pair and then
    # each escaped quote leaves only the quotes that open and close strings (without an
    # escaped quote, every quote does).
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b'\\"' in raw else raw
    strings = text.count(b'"') // 2
    if strings > 2 * limit:  # a key and a value at most per counted value
        return strings
    # every string as a 0: no byte of it left, and no array or object of it looks empty
    outside = b"0".join(text.split(b'"')[::2]).translate(None, _WHITESPACE)
    return _structure(outside) + 1 - outside.count(b"[]") - outside.count(b"{}")


def _structure(text: bytes) -> int:
    return len(text) - len(text.translate(None, _STRUCTURE))  # one pass of C
