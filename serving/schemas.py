"""The API's request and response models: what /openapi.json describes, field by field.

The views declare them with ``@documented(...)`` (:mod:`serving.apidoc`); the limits come from
:mod:`serving.validation` and the event contract (:mod:`lambdarec.events`), so the document says
what the edge enforces. Validation itself stays in :mod:`serving.validation` (its one-line errors
name the field and the fix); the unit tests check that these models accept what it accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from lambdarec.events import REQUEST_ID_REGEX, Event, Id
from lambdarec.recommend.policies import POLICIES
from lambdarec.recommend.sources import REGISTRY
from serving.validation import EVENTS_MAX, EXCLUDE_MAX, K_DEFAULT, K_MAX

#: The parts a degraded answer may have skipped (``degraded_parts``).
DegradedPart = Literal["online_store", "index", "model", "ranker", "index_version"]

_SOURCES: list[JsonValue] = [*sorted(REGISTRY)]
_POLICIES: list[JsonValue] = [*POLICIES]
_SESSION = (
    "Current session; enables session features. Bound to the first user seen on it: another "
    "user's request with it is refused (409)."
)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class RecommendQuery(BaseModel):
    """The query string of ``GET /recommend``."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="Shopper id.")
    session_id: Id | None = Field(None, description=_SESSION)
    k: int = Field(K_DEFAULT, ge=1, le=K_MAX, description="List size.")
    exclude: str | None = Field(
        None,
        description=f"Comma-separated item ids to leave out (at most {EXCLUDE_MAX}; a request "
        "line holds about 62: POST the query for more).",
    )


class RecommendBody(BaseModel):
    """The body of ``POST /recommend``: the GET form's fields as a JSON object."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id = Field(description="Shopper id.")
    # Optional but never null (the edge refuses a null id): no default in the schema.
    session_id: Id = Field(None, description=_SESSION, json_schema_extra=_no_default)  # type: ignore[assignment]
    k: int | None = Field(
        None, ge=1, le=K_MAX, description=f"List size; {K_DEFAULT} when absent or null."
    )
    exclude: list[Id] = Field(
        default_factory=list, max_length=EXCLUDE_MAX, description="Item ids to leave out."
    )


class EventBatch(
    RootModel[Event | Annotated[list[Event], Field(min_length=1, max_length=EVENTS_MAX)]]
):
    """One event, or a batch refused whole at its first invalid event."""


class Reason(BaseModel):
    """A feature that moved the item's score, and by how much."""

    feature: str
    contribution: float


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    source: str = Field(
        description="The source that contributed most.",
        json_schema_extra={"enum": _SOURCES},
    )
    sources: list[str] = Field(description="Every source that proposed the item.")
    category: str | None
    position: int = Field(ge=0, description="0-based; echo it in a click's `context`.")
    reasons: list[Reason] = Field(description="The top contributions to the score.")


class Recommendation(BaseModel):
    """The list, and how it was made."""

    request_id: str = Field(
        pattern=REQUEST_ID_REGEX, description="Echo it in a click's `context` (attribution)."
    )
    user_id: str
    session_id: str | None
    variant: str = Field(description="The user's A/B variant.")
    policy: str = Field(
        description="What the variant serves (LAMBDAREC_AB_POLICIES): pipeline (every source, "
        "the ranker, the rules), no_ranker (every source by the blend of their scores) or "
        "popular (the popularity baseline); the same exclusions and rules apply to each.",
        json_schema_extra={"enum": _POLICIES},
    )
    ranker: str | None = Field(
        description="The model that ranked the list: `champion`, or the run folder of the "
        "variant's own DeepFM (LAMBDAREC_AB_RANKERS); null when the policy does not rank."
    )
    items: list[RecommendedItem]
    degraded: bool = Field(description="Whether a dependency was skipped.")
    degraded_parts: list[DegradedPart]
    timings_ms: dict[str, float] = Field(description="Milliseconds per stage.")
    candidates: dict[str, int] = Field(description="Candidates each source gave, before filters.")


class Accepted(BaseModel):
    """How many events Kafka acknowledged (all of the request's)."""

    accepted: int = Field(ge=1)


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    down: list[str] = Field(description="The dependencies that do not answer.")
    checks: dict[str, str] = Field(description="`ok` or the reason, per dependency.")


class ErrorDetail(BaseModel):
    field: str = Field(
        description="The input at fault: a query parameter, a JSON field (`exclude[3]`, "
        "`context.position`) or `$` for the whole input."
    )
    message: str = Field(description="What is wrong and how to fix it, in one line.")
    index: int | None = Field(None, description="Position of the refused event in a batch.")
    error_id: str | None = Field(
        None, description="On a 500: the id the server log has the error under."
    )


class Error(BaseModel):
    """Every error, whatever the endpoint; never a traceback."""

    error: ErrorDetail
