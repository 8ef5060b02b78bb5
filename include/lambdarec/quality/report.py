"""What a validation run found, in a form a person (and an Airflow log) can read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Failure:
    """One failed expectation: which, on what column(s), and the values that broke it."""

    expectation: str
    column: str | None
    bounds: dict[str, Any]
    observed: Any = None
    unexpected_count: int | None = None
    element_count: int | None = None
    unexpected_sample: list[Any] = field(default_factory=list)
    error: str | None = None

    def __str__(self) -> str:
        target = f"({self.column})" if self.column else ""
        bounds = ", ".join(f"{k}={_short(v)}" for k, v in self.bounds.items())
        head = f"{self.expectation}{target}" + (f" [{bounds}]" if bounds else "")
        if self.error:
            return f"{head}: could not be evaluated: {self.error}"
        parts = []
        if self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            parts.append(f"{self.unexpected_count}{of} values unexpected")
        if self.unexpected_sample:
            parts.append(f"e.g. {_short(self.unexpected_sample)}")
        if self.observed is not None:
            parts.append(f"observed {_short(self.observed)}")
        return f"{head}: {'; '.join(parts) or 'failed'}"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`lambdarec.quality.runner.validate` for one table and day."""

    table: str
    day: str
    success: bool
    row_count: int
    previous_day: str | None
    previous_row_count: int | None
    failures: list[Failure]
    evaluated: int
    data_docs_page: Path | None

    def summary(self) -> str:
        status = "passed" if self.success else f"FAILED ({len(self.failures)} of {self.evaluated})"
        prev = (
            f", previous partition {self.previous_day}: {self.previous_row_count} rows"
            if self.previous_day
            else ", no previous partition"
        )
        lines = [f"{self.table} {self.day}: {status}; {self.row_count} rows{prev}"]
        lines += [f"  - {f}" for f in self.failures]
        if self.data_docs_page:
            lines.append(f"  Data Docs: {self.data_docs_page}")
        return "\n".join(lines)

    __str__ = summary

    def raise_for_failure(self) -> ValidationReport:
        """Raise :class:`DataQualityError` when the gate failed (a DAG task's last line)."""
        if not self.success:
            raise DataQualityError(self)
        return self


class DataQualityError(Exception):
    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
