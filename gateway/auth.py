"""Bearer tokens for every write to the gateway API."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.config import ApiSection

_bearer = HTTPBearer(auto_error=False, description="the gateway's API token ([api] token)")


def require_writer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    api: ApiSection = request.app.state.config.api
    if api.token is None:
        if api.local_no_auth:
            return
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "writes are disabled: no API token is configured ([api] token or EDGETWIN_API_TOKEN)",
        )
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this write needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Constant time, so response timing does not tell how much of a guess was right.
    if not hmac.compare_digest(
        credentials.credentials.encode(), api.token.get_secret_value().encode()
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")


Writer = Depends(require_writer)
