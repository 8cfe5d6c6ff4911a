# Synergos MQ: RabbitMQ with its management UI and the Synergos topology declared at boot.
#
#   docker build -f docker/mq.Dockerfile --target synergos_mq -t synergos_mq:v0.1.0 .
#
# 5672 AMQP, 15672 management UI (guest/guest; see docker/mq/rabbitmq.conf before exposing it).
FROM rabbitmq:4.1.4-management AS synergos_mq
COPY --chown=rabbitmq:rabbitmq docker/mq/rabbitmq.conf /etc/rabbitmq/conf.d/30-synergos.conf
COPY --chown=rabbitmq:rabbitmq docker/mq/definitions.json /etc/rabbitmq/definitions.json
EXPOSE 5672 15672
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=5 \
    CMD ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]
