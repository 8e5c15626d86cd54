"""Traffic model: from daily active users to peak concurrency.

The cost guide's usage model (docs/gpus-and-costs.md#usage-model): every daily user sends
``requests_per_user`` requests a day of ``tokens_per_request`` output tokens; ``peak_share`` of the
day's traffic arrives within ``peak_hours``; a user reads at ``user_tok_s`` tokens/s, so one request
keeps a sequence busy for ``tokens_per_request / user_tok_s`` seconds (200 / 40 = 5 s). By Little's
law the peak concurrency is the peak arrival rate times that duration::

    >>> profile = UsageProfile(daily_users=1_000)
    >>> round(peak_concurrency(profile), 2)       # 2,100 requests in 8 h -> ~4.4/min
    0.36

A month is 30 days (720 hours), as in the guide's ``$/hr x 720``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SECONDS_PER_HOUR = 3_600
HOURS_PER_MONTH = 720
DAYS_PER_MONTH = HOURS_PER_MONTH // 24


class UsageProfile(BaseModel):
    """What the users of one deployment do, in the guide's terms (defaults are the guide's).

    ``prompt_tokens`` is what a request sends (system prompt + history + question); with
    half the reply on average, it sets :func:`context_tokens`, the KV cache a conversation
    holds while it decodes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    daily_users: int = Field(gt=0, description="daily active users")
    requests_per_user: float = Field(default=3.0, gt=0, description="requests per user per day")
    tokens_per_request: int = Field(default=200, gt=0, description="output tokens per request")
    peak_share: float = Field(
        default=0.7, gt=0, le=1, description="share of traffic in the peak window"
    )
    peak_hours: float = Field(
        default=8.0, gt=0, le=24, description="length of the peak window, hours"
    )
    user_tok_s: float = Field(
        default=40.0, gt=0, description="per-user speed that feels good, tok/s"
    )
    prompt_tokens: int = Field(default=500, ge=0, description="prompt tokens per request")


def context_tokens(profile: UsageProfile) -> int:
    """Average tokens a decoding sequence holds: the prompt plus half the reply (500 + 100)."""
    return profile.prompt_tokens + profile.tokens_per_request // 2


def requests_per_day(profile: UsageProfile) -> float:
    return profile.daily_users * profile.requests_per_user


def seconds_per_request(profile: UsageProfile) -> float:
    """How long one request keeps a sequence (or a serverless GPU) busy."""
    return profile.tokens_per_request / profile.user_tok_s


def peak_requests_per_second(profile: UsageProfile) -> float:
    peak_requests = requests_per_day(profile) * profile.peak_share
    return peak_requests / (profile.peak_hours * SECONDS_PER_HOUR)


def peak_concurrency(profile: UsageProfile) -> float:
    """Average number of requests in flight during the peak window (Little's law)."""
    return peak_requests_per_second(profile) * seconds_per_request(profile)


def peak_output_tok_s(profile: UsageProfile) -> float:
    """Output tokens per second the fleet must generate during the peak window."""
    return peak_concurrency(profile) * profile.user_tok_s


def busy_seconds_per_month(profile: UsageProfile) -> float:
    """Request-seconds a month: what a per-second serverless bill charges for."""
    return requests_per_day(profile) * DAYS_PER_MONTH * seconds_per_request(profile)
