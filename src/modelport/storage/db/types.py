"""Column types that make every database read back the same, typed Python values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from modelport.manifest import Manifest


class UTCDateTime(TypeDecorator[datetime]):
    """A moment in time, read back as an aware datetime in UTC on SQLite and PostgreSQL alike.

    PostgreSQL keeps ``timestamptz`` and returns it in the session's time zone; SQLite keeps text
    without an offset and returns a naive datetime. Values are written in UTC, so both read back the
    same. A naive value is refused on the way in: which zone it meant is unknown. The schema is plain
    ``DateTime(timezone=True)``, as the migrations create it.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass an aware one (modelport stores UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite's naive values were written in UTC (see process_bind_param).
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ManifestJSON(TypeDecorator[Manifest]):
    """The ``models.manifest`` column: a ``Manifest`` in Python, its JSON form in the database.

    The stored JSON is exactly ``Manifest.to_json()``, the form rows have always had, so no migration
    was needed when the column became typed.
    """

    impl = JSON
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(none_as_null=True)  # no manifest (a model still uploading) is SQL NULL, as always

    def process_bind_param(self, value: Manifest | None, dialect: Dialect) -> dict[str, Any] | None:
        return None if value is None else value.to_json()

    def process_result_value(self, value: Any | None, dialect: Dialect) -> Manifest | None:
        return None if value is None else Manifest.from_json(value)
