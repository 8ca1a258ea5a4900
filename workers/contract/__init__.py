"""The wire contract shared by producers and workers.

Everything that crosses Redis is one of the pydantic models below, serialized as JSON (never
pickle). Producers import this package and nothing else from ``workers``; keep it import-light
(pydantic and the standard library only) and free of side effects.

Redis key layout (all per job, all derived from the job id) lives here too, so that the two
sides can never disagree on where a result or an event stream is.
"""

from __future__ import annotations

from workers.contract.base import DEFAULT_QUEUE, SCHEMA_VERSION, TASK_NAME, base_model_name, new_job_id, split_model_id
from workers.contract.caching import CacheSpec
from workers.contract.events import (
    TERMINAL_EVENT_TYPES,
    CancelledEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    RepairEvent,
    StartEvent,
    StreamEvent,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
    parse_event,
)
from workers.contract.job import CompletionJob
from workers.contract.keys import JobKeys
from workers.contract.messages import FunctionCall, Message, ReasoningBlock, Tool, ToolCall, ToolFunction, ToolName
from workers.contract.params import (
    ContentPart,
    ImagePart,
    ImageURL,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    NamedToolChoice,
    Reasoning,
    RequestParams,
    ResponseFormat,
    TextFormat,
    TextPart,
    ToolChoice,
)
from workers.contract.prompt import (
    LabelTarget,
    PromptDefaults,
    PromptInfo,
    PromptKeys,
    PromptLabel,
    PromptMessage,
    PromptRef,
    PromptVersion,
)
from workers.contract.redaction import monitor_repr, redact
from workers.contract.result import (
    Alternative,
    Attempt,
    CompletionResult,
    ErrorInfo,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from workers.contract.tools import TOOL_WORKERS_KEY, ToolInfo, WorkerTools, worker_tools_key

__all__ = [
    "DEFAULT_QUEUE",
    "SCHEMA_VERSION",
    "TASK_NAME",
    "TERMINAL_EVENT_TYPES",
    "TOOL_WORKERS_KEY",
    "Alternative",
    "Attempt",
    "CacheSpec",
    "CancelledEvent",
    "CompletionJob",
    "CompletionResult",
    "ContentPart",
    "DeltaEvent",
    "DoneEvent",
    "ErrorEvent",
    "ErrorInfo",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "JobKeys",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "LabelTarget",
    "Message",
    "NamedToolChoice",
    "PromptDefaults",
    "PromptInfo",
    "PromptKeys",
    "PromptLabel",
    "PromptMessage",
    "PromptRef",
    "PromptVersion",
    "Reasoning",
    "ReasoningBlock",
    "RepairEvent",
    "RequestParams",
    "ResponseFormat",
    "StartEvent",
    "StreamEvent",
    "TextFormat",
    "TextPart",
    "Timings",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolCallEvent",
    "ToolChoice",
    "ToolFunction",
    "ToolInfo",
    "ToolName",
    "ToolResultEvent",
    "TopLogprob",
    "Usage",
    "UsageEvent",
    "WorkerTools",
    "base_model_name",
    "monitor_repr",
    "new_job_id",
    "parse_event",
    "redact",
    "split_model_id",
    "worker_tools_key",
]
