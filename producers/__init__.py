"""Everything a calling service needs to enqueue LLM jobs and read their results.

Only :mod:`workers.contract` is imported from the worker side.
"""

from producers.aclient import AsyncClient, AsyncJobHandle
from producers.answer import AnswerText
from producers.client import (
    Client,
    InvalidJobError,
    JobHandle,
    JobLostError,
    RedisFullError,
    ResultTimeoutError,
    SubmitRefusedError,
)
from producers.settings import ProducerSettings
from workers.contract import CompletionJob, CompletionResult, Message, StreamEvent

__all__ = [
    "AnswerText",
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "CompletionJob",
    "CompletionResult",
    "InvalidJobError",
    "JobHandle",
    "JobLostError",
    "Message",
    "ProducerSettings",
    "RedisFullError",
    "ResultTimeoutError",
    "StreamEvent",
    "SubmitRefusedError",
]
