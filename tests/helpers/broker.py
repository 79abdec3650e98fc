"""Tests use the same local-broker launcher as the demo and the benchmarks."""

from tools.local_broker import Broker, free_port, mosquitto_binary

__all__ = ["Broker", "free_port", "mosquitto_binary"]
