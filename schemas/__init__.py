"""meterline's public contracts: the usage event, budgets, breaches, dead letters."""

from schemas.breach import BreachEvent
from schemas.budget import Budget, BudgetFile
from schemas.deadletter import DeadLetter
from schemas.usage import BUCKETS, AcceptedUsage, Tokens, UsageEvent

__all__ = [
    "BUCKETS",
    "AcceptedUsage",
    "BreachEvent",
    "Budget",
    "BudgetFile",
    "DeadLetter",
    "Tokens",
    "UsageEvent",
]
