"""The API description, built from the code: ``@documented(...)`` on a view names its request and
response models (:mod:`serving.schemas`), and spectree walks the app's url_map, so a route a
blueprint adds is described (its docstring, its path parameters) without a second list to edit.

Validation stays at the edge (:mod:`serving.validation`): the decorator only describes, so the
request is refused with the project's one-line errors, never spectree's. :func:`document` adds
what every route shares: the error model on a 500 (the app's handler answers every unexpected
error with it), optional query parameters as plain types, each operation tagged by its blueprint.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.models import InType, SecureType

from serving.schemas import Error

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask

F = TypeVar("F", bound="Callable[..., Any]")

__all__ = ["KEYED", "Response", "documented", "document", "openapi_path", "refusals"]

#: Where the app keeps its document (routes are fixed once the app serves).
EXTENSION = "lambdarec.openapi"
UNEXPECTED = 500

#: Either header carries the key (when the server has LAMBDAREC_API_KEYS; otherwise none is asked).
KEYED: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKeyHeader": []}]

_DESCRIPTION = (
    "Recommendations in milliseconds, click events in, health out. /recommend and /events need "
    "an API key with their scope when the server has keys configured, and are rate limited per "
    "key (per client IP without keys) in each worker. Every error is the `Error` model."
)
_BUILDING = threading.Lock()
_RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


class _Spec(SpecTree):
    """spectree, with the document built for the app at hand (spectree caches one per instance;
    the app caches its own, see :func:`document`)."""

    @property
    def spec(self) -> dict[str, Any]:
        # Building lifts the models' nested definitions out of them: build from a copy, so the
        # next app's document has them too.
        models = self.models
        self.models = copy.deepcopy(models)
        try:
            built: dict[str, Any] = json.loads(json.dumps(self._generate_spec()))
        finally:
            self.models = models
        return built


API = _Spec(
    "flask",
    title="lambdarec serving API",
    version="1",
    description=_DESCRIPTION,
    # Views take no model arguments (they validate themselves), so their hints are never read.
    annotations=False,
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    # spectree adds this status with this model to every described view: the app's answer to an
    # unexpected error (it never answers spectree's validation errors: validation is skipped).
    validation_error_status=UNEXPECTED,
    validation_error_model=Error,
    security_schemes=[
        SecurityScheme(
            name="bearer",
            data=SecuritySchemeData(
                type=SecureType.HTTP,
                scheme="bearer",
                description="An API key minted by `lambdarec api-key new`.",
            ),
        ),
        SecurityScheme(
            name="apiKeyHeader",
            data=SecuritySchemeData(
                type=SecureType.API_KEY, name="X-API-Key", field_in=InType.HEADER
            ),
        ),
    ],
)


def documented(**kwargs: Any) -> Callable[[F], F]:
    """Describe a view: ``query=``/``json=`` models, ``resp=Response(HTTP_200=Model, ...)``,
    ``security=KEYED``; the summary and description are its docstring's.

    Only describes: the view runs as written. spectree's validating wrapper (which would re-read
    and rebuild every response) is kept as the view's ``__wrapped__``, where spectree looks for a
    view's description, and never called.
    """

    def wrap(view: F) -> F:
        described = API.validate(skip_validation=True, **kwargs)(view)

        @functools.wraps(view)
        def run(*args: Any, **kw: Any) -> Any:
            return view(*args, **kw)

        run.__wrapped__ = described  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return wrap


def refusals(scope: str) -> dict[str, Any]:
    """The answers a keyed, rate-limited view may give before it reads the request (for
    ``Response(**...)``)."""
    return {
        "HTTP_401": (Error, "No or unknown API key (WWW-Authenticate says how to send one)."),
        "HTTP_403": (Error, f"The key lacks the `{scope}` scope."),
        "HTTP_409": (Error, "The session id belongs to another user; start a new session."),
        "HTTP_429": (
            Error,
            "Over the key's (or, without keys, the client IP's) rate in this worker; retry "
            "after the Retry-After seconds.",
        ),
    }


def openapi_path(rule: str) -> str:
    """A url_map rule as an OpenAPI path: ``/docs/<path:name>`` -> ``/docs/{name}``."""
    return _RULE_VARIABLE.sub(r"{\1}", rule)


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes (built once per app)."""
    cached = app.extensions.get(EXTENSION)
    if cached is None:
        # One build at a time: a build swaps the shared instance's models (see _Spec.spec).
        with _BUILDING, app.app_context():
            cached = app.extensions.get(EXTENSION) or _finish(API.spec, app)
            app.extensions[EXTENSION] = cached
    return cached


def _finish(doc: dict[str, Any], app: Flask) -> dict[str, Any]:
    blueprints = {
        (openapi_path(rule.rule), method.lower()): rule.endpoint.rpartition(".")[0] or "app"
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
    }
    error = {"$ref": "#/components/schemas/Error"}
    doc["components"]["schemas"].setdefault("Error", Error.model_json_schema())
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if not op.get("tags"):
                op["tags"] = [blueprints.get((path, method), "app")]
            for param in op.get("parameters", []):
                param["schema"] = _not_null(param["schema"])
            responses = op.setdefault("responses", {})
            if not any(code.startswith("2") for code in responses):
                responses["200"] = {"description": "OK"}
            responses[str(UNEXPECTED)] = {
                "description": "An unexpected error: logged with its traceback, answered with "
                "its error id only.",
                "content": {"application/json": {"schema": error}},
            }
    return doc


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter is absent, never null: ``X | None`` is described as ``X``."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    return {**kept[0], **rest}
