"""The scraper's in-flight baseline: what this gateway sent or finished while a scrape was
under way is already in the page vLLM rendered, so it must not be counted again."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.routing.load import view
from gateway.routing.scraper import LoadScraper
from gateway.settings import RouterSettings
from gateway.upstreams import Upstream, UpstreamPool
from tests.vllm_standin import WholeAnswer

PAGE = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.0
"""


class Replica:
    """A vLLM stand-in whose page counts this gateway's requests as they are at the moment
    it renders; ``during`` runs first: what the gateway does while the scrape travels."""

    def __init__(self, upstream: Upstream, others: int) -> None:
        self.upstream = upstream
        self.others = others  # other gateways' requests running there
        self.during: Callable[[], None] = lambda: None

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> WholeAnswer:
        assert (method, url) == ("GET", self.upstream.url + "/metrics")
        self.during()
        running = self.others + self.upstream.in_flight
        return WholeAnswer(200, PAGE.format(running=running, waiting=0).encode())

    async def aclose(self) -> None:
        pass


def scraper_for(pool: UpstreamPool, client: Replica) -> LoadScraper:
    metrics = GatewayMetrics(CollectorRegistry())
    return LoadScraper(RouterSettings(), pool, client, metrics, clock=lambda: 100.0)


def load_of(scraper: LoadScraper, upstream: Upstream) -> float:
    return view(scraper.scrapes[upstream.label], upstream.in_flight, 100.0, 3.0).load


async def test_requests_sent_while_a_scrape_travels_are_counted_once() -> None:
    pool = UpstreamPool(["http://127.0.0.1:8001"])
    upstream = pool.upstreams[0]
    upstream.in_flight = 2
    replica = Replica(upstream, others=5)

    def burst() -> None:
        upstream.in_flight += 3  # sent after the scrape left, in the page it renders

    replica.during = burst
    scraper = scraper_for(pool, replica)
    await scraper.scrape(upstream)
    assert load_of(scraper, upstream) == 5 + 2 + 3  # not 13: the burst is in the page
    upstream.in_flight += 1  # sent after the scrape: only the count knows
    assert load_of(scraper, upstream) == 11


async def test_requests_finished_while_a_scrape_travels_are_taken_off_once() -> None:
    pool = UpstreamPool(["http://127.0.0.1:8001"])
    upstream = pool.upstreams[0]
    upstream.in_flight = 6
    replica = Replica(upstream, others=1)

    def finish() -> None:
        upstream.in_flight -= 4  # done before the page was rendered: not in it

    replica.during = finish
    scraper = scraper_for(pool, replica)
    await scraper.scrape(upstream)
    assert load_of(scraper, upstream) == 1 + 2  # not 1 + 2 - 4 floored at 2
    upstream.in_flight -= 2
    assert load_of(scraper, upstream) == 1
