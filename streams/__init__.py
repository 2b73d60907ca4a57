"""meterline: metering and budget governance for AI token usage.

An event's trip, one module per stage:

    intake      decode, validate, de-duplicate, dead-letter
    pricing     cost from the genai-prices catalog and local overrides
    accounting  calendar periods and per-team counters
    budgets     threshold evaluation and breach events
    app         the Faust worker that runs the stages above
    sink        the ClickHouse writer (its own consumer group)
"""

__version__ = "0.1.0"
