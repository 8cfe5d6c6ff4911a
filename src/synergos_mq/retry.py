"""How often, and how long after, a consumer retries a message whose handler failed (a Worker
down, a store busy): exponential backoff through the broker, never a sleeping consumer.

A failed attempt is acked and re-published to a delay queue of its own queue and delay
(`train.retry.5000ms`: durable, `x-message-ttl` the delay, dead-lettering back to `train` when it
expires), with `x-synergos-attempts` + 1; the consumer meanwhile takes other work and answers
heartbeats. After `retries` retries the message is dead-lettered with its reason.

Defaults: 3 retries after 5 s, 20 s and 80 s (4 attempts in all), from
`SYNERGOS_MQ_RETRIES`, `SYNERGOS_MQ_RETRY_DELAY_S` (the first delay) and `SYNERGOS_MQ_RETRY_FACTOR`
(each next delay is the last times this).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_DELAY_S = 24 * 3600.0  # no retry waits longer than a day


class RetryPolicy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNERGOS_MQ_", extra="ignore", frozen=True)

    retries: int = Field(default=3, ge=0, le=50, description="retries after the first attempt")
    retry_delay_s: float = Field(default=5.0, ge=0.01, le=MAX_DELAY_S, description="wait before the first retry")
    retry_factor: float = Field(default=4.0, ge=1.0, le=100.0, description="each next wait is the last times this")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay_s(self, attempt: int) -> float:
        """The wait before the attempt after failed attempt `attempt` (1 for the first)."""
        return min(MAX_DELAY_S, self.retry_delay_s * self.retry_factor ** max(0, attempt - 1))

    def describe(self) -> str:
        """`3 retries after 5 s, 20 s, 80 s`, for log lines."""
        if not self.retries:
            return "no retries"
        waits = ", ".join(f"{self.delay_s(n):g} s" for n in range(1, self.retries + 1))
        return f"{self.retries} retr{'y' if self.retries == 1 else 'ies'} after {waits}"
