"""Adapters to the world outside the saga: the stores, the participant caller, the outbox relay
to Kafka, token checks, metrics and logs. They report facts and never decide a saga rule."""
