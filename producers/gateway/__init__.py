"""The HTTP gateway: enqueue from any language, follow jobs over SSE, OpenAI-compatible chat.

``create_gateway(GatewaySettings(...))`` builds the ASGI app; ``llmq gateway`` runs it on uvicorn.
Not imported by ``producers/__init__.py``: a service that only enqueues never loads Starlette.
"""

from producers.gateway.app import create_gateway
from producers.gateway.settings import GatewaySettings, parse_tokens

__all__ = ["GatewaySettings", "create_gateway", "parse_tokens"]
