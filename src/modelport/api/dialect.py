"""What a wire dialect answers for a failure: the ``Dialect`` protocol, one implementation per dialect.

``api/errors.py`` picks the dialect for a request by its path and hands it the failure, already
sorted into one of four kinds; the dialect only shapes the answer. Logging, ``Retry-After`` and the
lost-database case stay in ``api/errors.py``, the same for every dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from modelport.errors import ModelportError


@dataclass(frozen=True)
class Problem:
    """One finding of FastAPI's request validation."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    @property
    def field(self) -> str:
        """The dotted path of the field at fault (``messages.0.content``); empty for the body itself."""
        return ".".join(str(part) for part in self.loc if part != "body")

    def describe(self) -> str:
        if not self.field and self.type == "model_attributes_type":
            return "the request body must be a JSON object"
        return f"{self.field}: {self.msg}" if self.field else self.msg


def problems(error: RequestValidationError) -> list[Problem]:
    return [Problem(tuple(e.get("loc", ())), e.get("msg", ""), e.get("type", "")) for e in error.errors()]


class Dialect(Protocol):
    def domain(self, request: Request, error: ModelportError) -> Response:
        """A domain error (``modelport/errors.py``)."""
        ...

    def validation(self, request: Request, problems: list[Problem]) -> Response:
        """A request FastAPI could not parse into its route's parameters, with every problem found."""
        ...

    def http(self, request: Request, error: HTTPException) -> Response:
        """An HTTP-level refusal: unknown route (404), wrong method (405), a stalled body (408), ..."""
        ...

    def unexpected(self, request: Request) -> Response:
        """A failure nobody anticipated; it is logged already, and its text must not reach the caller."""
        ...
