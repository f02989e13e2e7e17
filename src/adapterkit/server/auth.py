"""Bearer tokens: an optional API key for the service routes, an admin token for the admin
routes (which exist only when an admin token is given). Tokens are compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False)


def bearer(token: str | None, what: str):
    """A FastAPI dependency that answers 401 unless the request carries ``Bearer <token>``
    (none when ``token`` is None)."""

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, f"this route needs the {what} as 'Authorization: Bearer <{what}>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return check
