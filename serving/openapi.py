"""The API description (OpenAPI 3.1) and a plain HTML page rendered from it (no JS, no CDN)."""

from __future__ import annotations

import html
import json
from typing import Any

from lambdarec.events import ID_REGEX, MAX_ID_LEN
from lambdarec.recommend.policies import POLICIES
from lambdarec.recommend.sources import REGISTRY
from serving.validation import EVENTS_MAX, EXCLUDE_MAX, K_MAX, MAX_BODY_BYTES

_ERROR = {"$ref": "#/components/schemas/Error"}
#: Either header carries the key (when the server has LAMBDAREC_API_KEYS; otherwise none is asked).
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKeyHeader": []}]


def _refusals(scope: str) -> dict[str, Any]:
    """The answers every keyed, rate-limited endpoint may give before it looks at the request."""
    return {
        "401": _resp("No or unknown API key (WWW-Authenticate says how to send one).", _ERROR),
        "403": _resp(f"The key lacks the `{scope}` scope.", _ERROR),
        "409": _resp("The session id belongs to another user; start a new session.", _ERROR),
        "429": _resp(
            "Over the key's (or, without keys, the client IP's) rate in this worker; retry "
            "after the Retry-After seconds.",
            _ERROR,
        ),
    }


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": ID_REGEX}
_K = {"type": "integer", "minimum": 1, "maximum": K_MAX, "default": 10}


def _id_param(name: str, required: bool, doc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": doc, "schema": _ID}


def spec() -> dict[str, Any]:
    from lambdarec.events import json_schema

    event = json_schema()
    event.pop("$schema", None)
    event.pop("$id", None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lambdarec serving API",
            "version": "1",
            "description": "Recommendations in milliseconds, click events in, health out. "
            "/recommend and /events need an API key with their scope when the server has keys "
            "configured, and are rate limited per key (per client IP without keys) in each worker.",
        },
        "paths": {
            "/recommend": {
                "get": {
                    "summary": "Top-k items for a user (and session), with why each was chosen.",
                    "description": f"`exclude` in a query string is cut by the request line "
                    f"near 62 ids; POST the query to send up to {EXCLUDE_MAX}.",
                    "security": _SECURITY,
                    "parameters": [
                        _id_param("user_id", True, "Shopper id."),
                        _id_param(
                            "session_id",
                            False,
                            "Current session; enables session features. Bound to the first "
                            "user seen on it.",
                        ),
                        {
                            "name": "k",
                            "in": "query",
                            "required": False,
                            "description": "List size.",
                            "schema": _K,
                        },
                        {
                            "name": "exclude",
                            "in": "query",
                            "required": False,
                            "description": f"Comma-separated item ids to leave out (at most "
                            f"{EXCLUDE_MAX}; the request line holds about 62).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _resp(
                            "The list; `degraded` says whether a dependency was skipped.",
                            {"$ref": "#/components/schemas/Recommendation"},
                        ),
                        "400": _resp("Invalid or unknown query parameter.", _ERROR),
                        **_refusals("recommend"),
                    },
                },
                "post": {
                    "summary": "The same as GET, the query as a JSON object: for long exclusions.",
                    "security": _SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RecommendQuery"}
                            }
                        },
                    },
                    "responses": {
                        "200": _resp(
                            "The list, as GET answers it.",
                            {"$ref": "#/components/schemas/Recommendation"},
                        ),
                        "400": _resp("Malformed JSON, an invalid or unknown field.", _ERROR),
                        **_refusals("recommend"),
                        "413": _resp(f"Body above {MAX_BODY_BYTES} bytes.", _ERROR),
                        "415": _resp("Not application/json.", _ERROR),
                    },
                },
            },
            "/events": {
                "post": {
                    "summary": f"One event or a list of 1-{EVENTS_MAX}, produced to Kafka.",
                    "description": "All or nothing: the first invalid event refuses the whole batch "
                    "(the error gives its index and field) and nothing is produced; so does an "
                    "event on a session bound to another user (409). A click on a recommended "
                    "item should echo its list in `context`: `request_id` (the /recommend "
                    "answer's, 32 lowercase hex characters) and `position` (the item's 0-based "
                    "position, an integer >= 0), so the click is attributed to that list and its "
                    "A/B variant; either, when present and malformed, is a 400 naming it.",
                    "security": _SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Event"},
                                        {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": EVENTS_MAX,
                                            "items": {"$ref": "#/components/schemas/Event"},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _resp(
                            "Acknowledged by Kafka.",
                            {"type": "object", "properties": {"accepted": {"type": "integer"}}},
                        ),
                        "400": _resp("Malformed JSON or an invalid event.", _ERROR),
                        **_refusals("events"),
                        "413": _resp(f"Body above {MAX_BODY_BYTES} bytes.", _ERROR),
                        "415": _resp("Not application/json.", _ERROR),
                        "503": _resp(
                            "Kafka unavailable; retry after the Retry-After seconds.", _ERROR
                        ),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness: the process answers.",
                    "responses": {"200": _resp("Alive.")},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: Kafka, online store and vector index.",
                    "responses": {
                        "200": _resp("All dependencies answer."),
                        "503": _resp("Which dependency is down and why."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this worker.",
                    "responses": {"200": _resp("Text exposition format.")},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This description.", "responses": {"200": _resp("OpenAPI 3.1.")}}
            },
            "/docs": {
                "get": {
                    "summary": "This description as a page.",
                    "responses": {"200": _resp("HTML.")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key minted by `lambdarec api-key new`.",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "RecommendQuery": {
                    "type": "object",
                    "required": ["user_id"],
                    "additionalProperties": False,
                    "properties": {
                        "user_id": _ID,
                        "session_id": _ID,
                        "k": _K,
                        "exclude": {
                            "type": "array",
                            "maxItems": EXCLUDE_MAX,
                            "items": _ID,
                            "description": "Item ids to leave out.",
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {
                                "field": {
                                    "type": "string",
                                    "description": "`$` for the whole input.",
                                },
                                "message": {"type": "string"},
                                "index": {
                                    "type": "integer",
                                    "description": "Position in an event batch.",
                                },
                            },
                        }
                    },
                },
                "Recommendation": {
                    "type": "object",
                    "properties": {
                        "request_id": {"type": "string"},
                        "user_id": {"type": "string"},
                        "session_id": {"type": ["string", "null"]},
                        "variant": {"type": "string"},
                        "policy": {
                            "type": "string",
                            "enum": list(POLICIES),
                            "description": "What the variant serves (LAMBDAREC_AB_POLICIES): "
                            "pipeline (every source, the ranker, the rules), no_ranker (every "
                            "source by the blend of their scores) or popular (the popularity "
                            "baseline); the same exclusions and rules apply to each.",
                        },
                        "degraded": {"type": "boolean"},
                        "degraded_parts": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "enum": [
                                    "online_store",
                                    "index",
                                    "model",
                                    "ranker",
                                    "index_version",
                                ],
                            },
                        },
                        "timings_ms": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                        },
                        "candidates": {
                            "type": "object",
                            "description": "candidates each source gave, before the filters",
                            "additionalProperties": {"type": "integer"},
                        },
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "item_id": {"type": "string"},
                                    "score": {"type": "number"},
                                    "source": {
                                        "type": "string",
                                        "enum": sorted(REGISTRY),
                                    },
                                    "sources": {"type": "array", "items": {"type": "string"}},
                                    "category": {"type": ["string", "null"]},
                                    "position": {"type": "integer"},
                                    "reasons": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "feature": {"type": "string"},
                                                "contribution": {"type": "number"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "Event": event,
            },
        },
    }


def docs_page(doc: dict[str, Any]) -> str:
    """Every path, method, parameter and response of ``doc`` as one self-contained page."""
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(doc['info']['title'])}</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "code,pre{background:#f4f4f4;padding:0 .2em}pre{padding:.6em;overflow:auto}"
        "h2{border-top:1px solid #ccc;padding-top:.6em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}",
        "</style></head><body>",
        f"<h1>{e(doc['info']['title'])}</h1><p>{e(doc['info'].get('description', ''))}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>",
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2>")
            out.append(f"<p>{e(op.get('summary', ''))}</p>")
            if op.get("description"):
                out.append(f"<p>{e(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                out.append(
                    "<table><tr><th>parameter</th><th>required</th><th>schema</th>"
                    "<th>description</th></tr>"
                )
                for p in params:
                    out.append(
                        f"<tr><td><code>{e(p['name'])}</code></td><td>{p.get('required', False)}"
                        f"</td><td><code>{e(json.dumps(p.get('schema', {})))}</code></td>"
                        f"<td>{e(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            body = op.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                out.append(f"<p>Body:</p><pre>{e(json.dumps(schema, indent=1))}</pre>")
            out.append("<ul>")
            for code, resp in op.get("responses", {}).items():
                out.append(f"<li><b>{e(code)}</b> {e(resp.get('description', ''))}</li>")
            out.append("</ul>")
    out.append("<h2>Schemas</h2>")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out.append(f"<h3>{e(name)}</h3><pre>{e(json.dumps(schema, indent=1))}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
