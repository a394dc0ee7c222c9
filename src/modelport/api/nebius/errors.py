"""Nebius' error shape, which is FastAPI's own: ``{"detail": "..."}``, and for request validation
422 ``{"detail": [{"loc", "msg", "type"}]}``."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from modelport.api.dialect import Problem
from modelport.errors import ModelportError


class NebiusErrors:
    """The ``Dialect`` of ``/v0``."""

    def domain(self, request: Request, error: ModelportError) -> Response:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)

    def validation(self, request: Request, problems: list[Problem]) -> Response:
        detail = [{"loc": list(p.loc), "msg": p.msg, "type": p.type} for p in problems]
        return JSONResponse({"detail": detail}, status_code=422)

    def http(self, request: Request, error: HTTPException) -> Response:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    def unexpected(self, request: Request) -> Response:
        return JSONResponse({"detail": "internal server error"}, status_code=500)


NEBIUS = NebiusErrors()
