"""A real single-node Kafka broker on 127.0.0.1 for tests and benchmarks (`broker.KafkaBroker`), from
Maven Central jars fetched by hack/build-kafka.sh. No Docker.

Test and developer tooling: not shipped in the operator package.
"""
