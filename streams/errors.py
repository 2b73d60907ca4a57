"""meterline's errors.

MeterlineError                 the root; every error we raise on purpose
├── ConfigError                a settings, budgets or overrides file is wrong
├── StackError                 a local service failed to start or stop
└── WarehouseError             ClickHouse refused or failed a request
"""

from __future__ import annotations


class MeterlineError(Exception):
    """Root of the errors meterline raises on purpose."""


class ConfigError(MeterlineError):
    """A configuration file or setting is invalid; the message says how to fix it."""


class StackError(MeterlineError):
    """A local service (broker, warehouse, worker, sink) did not start or stop."""


class WarehouseError(MeterlineError):
    """ClickHouse refused or failed a request.

    `code` is ClickHouse's numeric error code when the server sent one.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
