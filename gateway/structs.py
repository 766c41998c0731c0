"""The wire contract's msgspec Structs in the FastAPI API.

FastAPI speaks pydantic; the contract is msgspec (see agent/contract.py for why). Rather than
keep a pydantic copy of each document, which would drift, request bodies are validated by
msgspec against the contract's own types, responses are encoded by msgspec, and the OpenAPI
document describes both with msgspec's JSON schema of those same types.
"""

from __future__ import annotations

import math
from typing import Any, Final, TypeVar

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from edgetwin.agent.contract import locate_error

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
        # FastAPI's json.loads takes NaN, Infinity and numbers too large for a float (1e999);
        # JSON has none of them, and no field of the API means them.
        where = _non_finite(data)
        if where is not None:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", *where),
                        "msg": "NaN and Infinity are not JSON numbers",
                        "input": None,
                    }
                ]
            )
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


def _non_finite(data: Any) -> tuple[str | int, ...] | None:
    """The path of the first NaN or infinite number in decoded JSON, if any. Iterative: the
    body may nest as deep as the JSON decoder allowed."""
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path
        if isinstance(value, dict):
            pending.extend(((*path, str(k)), v) for k, v in value.items())
        elif isinstance(value, list):
            pending.extend(((*path, i), v) for i, v in enumerate(value))
    return None


def _json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as strings: the standard JSON encoder refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but one that echoes a NaN it was given is still an answer, not a 500."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=422, content={"detail": _json_safe(jsonable_encoder(exc.errors()))}
    )


def answer_bad_requests(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)


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
