"""``GET /v1/models`` and ``GET /v1/models/{model}``: what a tenant may name, in OpenAI's shape.

The list is the workers' catalog (``producers/catalog.py``): route aliases (``default`` among them,
owned by ``llmqueue``), then the ``provider:model`` ids the config names. Bare names of a model
family (``gpt-4o-mini``) are not listed one by one, but retrieving one answers as OpenAI does for a
model that exists. Every tenant sees the same list today: tenants scope budgets, not models.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producers.gateway.errors import GatewayError
from producers.gateway.state import gateway_of
from workers.contract.catalog import ModelCatalog, UnknownModelError

__all__ = ["list_models", "model_not_found", "retrieve_model"]


async def _catalog(request: Request) -> ModelCatalog:
    client = gateway_of(request).client
    catalog = await client.catalog.get_async(client.redis)
    # no worker has said, and no config file: what every worker accepts
    return catalog if catalog is not None else ModelCatalog(default_model=client.settings.default_model)


def _model(model_id: str, owner: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def model_not_found(message: str) -> GatewayError:
    """OpenAI's answer to a model name it does not have (the SDKs raise ``NotFoundError``)."""
    return GatewayError(404, message, param="model", code="model_not_found")


async def list_models(request: Request) -> Response:
    catalog = await _catalog(request)
    data = [_model(model_id, owner) for model_id, owner in catalog.listed_models()]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    name: str = request.path_params["model"]
    catalog = await _catalog(request)
    try:
        resolved = catalog.resolve(name)
    except UnknownModelError as exc:
        raise model_not_found(str(exc)) from None
    owner = "llmqueue" if name in catalog.aliases else resolved[0].partition(":")[0]
    return JSONResponse(_model(name, owner))
