"""Discovery of several replica groups: ``discovery.dns_names`` (one headless Service per
group, each with its port), from the settings to the pool, with a fake resolver."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.routing.discovery import Discovery, DnsNamesSource, DnsSource, source_of
from gateway.settings import DiscoverySettings, GatewaySettings, load_settings
from gateway.settings_env import settings_env, settings_from_values
from gateway.upstreams import UpstreamPool


def test_dns_names_come_from_the_environment_as_json_or_commas() -> None:
    for value in ('["chat-a.ns.svc", "embed.ns.svc:8001"]', "chat-a.ns.svc, embed.ns.svc:8001"):
        settings = load_settings(None, {"VKIT_GATEWAY_DISCOVERY__DNS_NAMES": value})
        assert settings.discovery.dns_targets == [("chat-a.ns.svc", 8000), ("embed.ns.svc", 8001)]
    both = DiscoverySettings(dns_name="a", dns_names=["b:9000", "a"], dns_port=7000)
    assert both.dns_targets == [("a", 7000), ("b", 9000)]  # each name once


def test_dns_names_written_by_the_one_writer_load_back() -> None:
    settings = settings_from_values({"discovery": {"dns_names": ["a.ns.svc", "b.ns.svc:8001"]}})
    env = settings_env(settings)
    assert env == {"VKIT_GATEWAY_DISCOVERY__DNS_NAMES": '["a.ns.svc", "b.ns.svc:8001"]'}
    assert load_settings(None, env).discovery == settings.discovery


@pytest.mark.parametrize("entry", ["a:0", "a:70000", "a:http", ":8000", "a b", "http://a"])
def test_a_bad_dns_name_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(ValidationError, match=f"'{entry}' is not 'name' or 'name:port'"):
        GatewaySettings(discovery={"dns_names": [entry]})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings(discovery={"file": "x", "dns_names": ["y"]})  # type: ignore[arg-type]


def test_one_name_is_the_single_source_and_several_are_looked_up_together() -> None:
    assert isinstance(source_of(DiscoverySettings(dns_names=["a"])), DnsSource)
    several = source_of(DiscoverySettings(dns_name="a", dns_names=["b:9"]))
    assert isinstance(several, DnsNamesSource)
    assert [(s.name, s.port) for s in several.sources] == [("a", 8000), ("b", 9)]
    assert source_of(DiscoverySettings()) is None


async def test_every_groups_replicas_join_the_pool_and_a_failed_name_keeps_its_own() -> None:
    answers: dict[str, list[str] | OSError] = {
        "chat.ns.svc": ["10.0.0.2", "10.0.0.1"],
        "embed.ns.svc": ["10.0.1.1"],
    }

    async def resolve(name: str, port: int) -> list[str]:
        answer = answers[name]
        if isinstance(answer, OSError):
            raise answer
        return answer

    source = DnsNamesSource(
        [
            DnsSource("chat.ns.svc", 8000, resolve=resolve),
            DnsSource("embed.ns.svc", 8001, resolve=resolve),
        ]
    )
    pool = UpstreamPool(["http://127.0.0.1:8000"])
    discovery = Discovery(source, pool, interval=1.0)
    assert await discovery.refresh()
    whole = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.1.1:8001"]
    assert [u.url for u in pool.upstreams] == whole
    answers["embed.ns.svc"] = OSError("resolver down")
    answers["chat.ns.svc"] = ["10.0.0.1"]  # one chat replica gone meanwhile
    assert await discovery.refresh()
    assert [u.url for u in pool.upstreams] == ["http://10.0.0.1:8000", "http://10.0.1.1:8001"]
    answers["embed.ns.svc"] = []  # that group scaled to zero
    assert await discovery.refresh()
    assert [u.url for u in pool.upstreams] == ["http://10.0.0.1:8000"]


async def test_a_name_never_answered_fails_the_whole_look_up() -> None:
    async def resolve(name: str, port: int) -> list[str]:
        if name == "late":
            raise OSError("no answer yet")
        return ["10.0.0.1"]

    source = DnsNamesSource(
        [DnsSource("early", 1, resolve=resolve), DnsSource("late", 2, resolve=resolve)]
    )
    pool = UpstreamPool(["http://127.0.0.1:8000"])
    assert not await Discovery(source, pool, interval=1.0).refresh()
    assert [u.url for u in pool.upstreams] == ["http://127.0.0.1:8000"]  # kept as it was
