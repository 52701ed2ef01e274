"""Workers and a client for Regent over its HTTP API (docs/workers.md)."""

from ._http import RegentError, Unreachable
from .client import Client
from .worker import Cancelled, NonRetryable, StepContext, Tally, Worker

__all__ = ["Client", "Worker", "StepContext", "NonRetryable", "Cancelled", "Tally", "RegentError", "Unreachable"]
__version__ = "0.3.0.dev0"
