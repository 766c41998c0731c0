"""The wire contract's msgspec Structs in the FastAPI API.

FastAPI speaks pydantic; the contract is msgspec (see agent/contract.py for why). Rather than
keep a pydantic copy of each document, which would drift, request bodies are validated by
msgspec against the contract's own types, responses are encoded by msgspec, and the OpenAPI
document describes both with msgspec's JSON schema of those same types.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec
from fastapi import FastAPI, Response
from fastapi.exceptions import RequestValidationError

from agent.contract import locate_error

T = TypeVar("T")

_REF: Final = "#/components/schemas/{name}"
_documented: set[Any] = set()


def schema_ref(kind: Any) -> dict[str, Any]:
    """A reference to `kind`'s schema, which the OpenAPI document then carries."""
    _documented.add(kind)
    return {"$ref": _REF.format(name=kind.__name__)}


def request_body(kind: Any, example: Any = None) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is a `kind`."""
    media: dict[str, Any] = {"schema": schema_ref(kind)}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def response_schema(kind: Any, description: str = "Successful Response") -> dict[str, Any]:
    """A `responses` entry for a route answering with a `kind`."""
    return {
        "description": description,
        "content": {"application/json": {"schema": schema_ref(kind)}},
    }


def parse_body(kind: type[T], data: Any) -> T:
    """Validate a request body; a 422 in FastAPI's usual form when it does not fit.

    FastAPI hands over raw bytes when the request did not say it is JSON (`curl -d` sends a
    form content type): those are parsed as JSON too, rather than refused for the header.
    """
    try:
        if isinstance(data, bytes | str):
            return msgspec.json.decode(data, type=kind)
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        message, path = locate_error(exc)
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", *path), "msg": message, "input": data}]
        ) from None
    except msgspec.DecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": str(exc), "input": None}]
        ) from None


class StructResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def document_structs(app: FastAPI) -> None:
    """Add the schemas of every Struct the routes refer to into the app's OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        kinds = sorted(_documented, key=lambda kind: kind.__name__)
        _, components = msgspec.json.schema_components(kinds, ref_template=_REF)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
