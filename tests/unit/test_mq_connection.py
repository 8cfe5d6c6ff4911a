"""`--queue rabbitmq HOST PORT` parsing and the connection settings Synergos insists on."""

from __future__ import annotations

import pytest

from synergos_mq import BrokerAddress, parse_queue_flag


def test_queue_flag_gives_the_broker_address() -> None:
    address = parse_queue_flag(["rabbitmq", "mq.internal", "5673"])
    assert (address.host, address.port) == ("mq.internal", 5673)
    assert parse_queue_flag(("RabbitMQ", "127.0.0.1", "5672")).host == "127.0.0.1"


@pytest.mark.parametrize(
    "values",
    [
        ["kafka", "host", "5672"],
        ["redis", "host", "6379"],
        ["rabbitmq", "host", "amqp"],
        ["rabbitmq", "host", "-1"],
        ["rabbitmq", "host", "0"],
        ["rabbitmq", "host", "65536"],
        ["rabbitmq", "host", "5672.0"],
        ["rabbitmq", "", "5672"],
        ["rabbitmq", "host"],
        ["rabbitmq", "host", "5672", "extra"],
        "rabbitmq host 5672",
    ],
)
def test_queue_flag_refuses_anything_else(values) -> None:
    with pytest.raises(ValueError):
        parse_queue_flag(values)


def test_password_never_shows_in_repr_or_str() -> None:
    address = BrokerAddress(host="mq", username="director", password="s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(address)
    assert "s3cr3t-pw" not in str(address)


def test_parameters_keep_heartbeats_on_and_bound_a_blocked_connection() -> None:
    params = BrokerAddress(host="mq", port=5673, username="u", password="p", virtual_host="synergos").parameters(
        "ttp-1"
    )
    assert (params.host, params.port, params.virtual_host) == ("mq", 5673, "synergos")
    assert params.heartbeat == 10
    assert params.blocked_connection_timeout == 30
    assert (params.connection_attempts, params.retry_delay) == (3, 1)
    assert (params.credentials.username, params.credentials.password) == ("u", "p")
    assert params.client_properties["connection_name"] == "ttp-1"


@pytest.mark.parametrize("kwargs", [{"heartbeat": 0}, {"port": 0}, {"host": ""}])
def test_unsafe_or_invalid_addresses_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        BrokerAddress(**{"host": "mq", **kwargs})
