"""Bearer tokens for every write to the gateway API."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgetwin.gateway.config import ApiSection

_bearer = HTTPBearer(auto_error=False, description="the gateway's API token ([api] token)")


def check_token(api: ApiSection, token: str | None) -> None:
    """Raise the 401 or 403 a write with bearer `token` (None: none given) deserves."""
    if api.token is None:
        if api.local_no_auth:
            return
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "writes are disabled: no API token is configured ([api] token or EDGETWIN_API_TOKEN)",
        )
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this write needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Constant time, so response timing does not tell how much of a guess was right.
    if not hmac.compare_digest(token.encode(), api.token.get_secret_value().encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, as HTTPBearer reads it."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def require_writer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    check_token(request.app.state.config.api, credentials.credentials if credentials else None)


Writer = Depends(require_writer)
