"""Routing in the gateway: which upstream each request goes to (``routing`` setting).

- :mod:`.router` -- the decision: round-robin, or aware of load and prompt prefix;
- :mod:`.ring` -- consistent hashing with bounded load (pure);
- :mod:`.key_table` -- where each active prefix key's cache is, keys spread evenly;
- :mod:`.affinity` -- a request's prefix key (pure);
- :mod:`.load` -- vLLM's gauges and in-flight counts as one load figure (pure);
- :mod:`.scraper` -- scraping each replica's ``/metrics`` in the background;
- :mod:`.replica_in_flight` -- the exact per-replica in-flight count;
- :mod:`.holding` -- holding requests while no replica is ready (scale to zero);
- :mod:`.discovery` -- the replica list from a file or DNS.
"""

from gateway.routing.discovery import Discovery, DnsSource, FileSource, source_of
from gateway.routing.holding import Hold
from gateway.routing.replica_in_flight import InFlightResponse, sending
from gateway.routing.router import AwareRouter, RoundRobinRouter, Route, Router
from gateway.routing.scraper import LoadScraper

__all__ = [
    "AwareRouter",
    "Discovery",
    "DnsSource",
    "FileSource",
    "Hold",
    "InFlightResponse",
    "LoadScraper",
    "RoundRobinRouter",
    "Route",
    "Router",
    "sending",
    "source_of",
]
