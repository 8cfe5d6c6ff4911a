"""Where the broker is, and how to reach it: `BrokerAddress` and the `--queue` flag parser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pika
import pika.exceptions

DEFAULT_PORT = 5672


@dataclass(frozen=True)
class BrokerAddress:
    """A RabbitMQ endpoint and the connection settings Synergos uses with it.

    Heartbeats are always on (a dead peer is noticed within ~2 × `heartbeat` seconds) and a
    broker alarm that blocks publishing fails after `blocked_connection_timeout` instead of
    hanging forever (pika's default). The password is kept out of `repr` and of every log line.
    """

    host: str
    port: int = DEFAULT_PORT
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    virtual_host: str = "/"
    heartbeat: int = 10
    blocked_connection_timeout: float = 30
    connection_attempts: int = 3
    retry_delay: float = 1

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("broker host must not be empty")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"broker port must be 1-65535 (got {self.port})")
        if self.heartbeat <= 0:
            raise ValueError("heartbeats must stay on: heartbeat must be a positive number of seconds")

    def parameters(self, connection_name: str | None = None) -> pika.ConnectionParameters:
        """pika connection parameters; `connection_name` shows in the management UI and `rabbitmqctl`."""
        properties = {"connection_name": connection_name} if connection_name else None
        return pika.ConnectionParameters(
            host=self.host,
            port=int(self.port),
            virtual_host=self.virtual_host,
            credentials=pika.PlainCredentials(self.username, self.password),
            heartbeat=self.heartbeat,
            blocked_connection_timeout=self.blocked_connection_timeout,
            connection_attempts=self.connection_attempts,
            retry_delay=self.retry_delay,
            client_properties=properties,
        )

    def __str__(self) -> str:
        return f"amqp://{self.username}@{self.host}:{self.port}{self.virtual_host}"


def parse_queue_flag(values: Sequence[str]) -> BrokerAddress:
    """Parse `--queue rabbitmq HOST PORT` (the three values after the flag) into a `BrokerAddress`.

    Raises `ValueError` for any kind other than rabbitmq, a missing host, or a port that is not a
    number in 1-65535.
    """
    if isinstance(values, str) or len(values) != 3:
        raise ValueError(
            f"--queue takes three values: rabbitmq HOST PORT (got {list(values) if not isinstance(values, str) else values!r})"
        )
    kind, host, port = (str(v).strip() for v in values)
    if kind.lower() != "rabbitmq":
        raise ValueError(f"--queue supports only rabbitmq (got {kind!r})")
    if not host:
        raise ValueError("--queue needs a broker host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--queue port must be a number in 1-65535 (got {port!r})")
    return BrokerAddress(host=host, port=int(port))


# Errors after which a fresh connection may succeed: the socket or the broker went away, or a
# channel was closed under us. `UnroutableError`/`NackError` are channel errors too, but the
# publish helpers translate them to `PublishError` before these are caught.
RECOVERABLE_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    OSError,
)


def connect(address: BrokerAddress, name: str) -> pika.BlockingConnection:
    """A new blocking connection, named so it can be told apart in `rabbitmqctl list_connections`."""
    return pika.BlockingConnection(address.parameters(connection_name=name))


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close `connection` if it is still open; a connection that is already gone is not an error."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - the connection is being discarded either way
        pass
