"""Prometheus metrics of one gateway, on a registry of its own (no process-wide singleton)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.devices = Gauge(
            "edgetwin_devices",
            "Devices by presence and by who serves their telemetry",
            ["presence", "served_by"],
            registry=self.registry,
        )
        self.simulated_messages = Counter(
            "edgetwin_simulated_messages",
            "Telemetry messages published by the simulation engine",
            registry=self.registry,
        )
        self.simulated_devices = Gauge(
            "edgetwin_simulated_devices",
            "Devices the simulation engine plays now",
            registry=self.registry,
        )
        self.status_messages = Counter(
            "edgetwin_status_messages",
            "Status messages received, by verdict",
            ["verdict"],
            registry=self.registry,
        )
        self.mqtt_connected = Gauge(
            "edgetwin_mqtt_connected",
            "1 while the gateway is connected to the broker",
            registry=self.registry,
        )
        self.config_pushes = Counter(
            "edgetwin_config_pushes",
            "Desired config writes, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.http_requests = Histogram(
            "edgetwin_http_request_duration_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
