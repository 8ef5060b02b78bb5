"""The API description: ``/openapi.json`` (built from the views, :mod:`serving.apidoc`) and Swagger
UI at ``/docs``, its files served from the ``flask-swagger-ui`` package's copy of the Swagger UI
distribution (``/docs/LICENSE`` is its licence), so the page works with no internet.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, jsonify, send_from_directory, url_for

from serving.apidoc import Response as Described
from serving.apidoc import document, documented
from serving.schemas import Error

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

bp = Blueprint("docs", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{css}"><link rel="icon" type="image/png" href="{icon}">
</head><body><div id="swagger-ui"></div>
<script src="{js}"></script>
<script>window.ui = SwaggerUIBundle({config});</script>
</body></html>
"""


@cache
def _assets() -> Path:
    return Path(str(files("flask_swagger_ui") / "dist"))


@bp.get("/openapi.json")
@documented(resp=Described(HTTP_200=(None, "The OpenAPI 3.1 document (JSON).")))
def openapi_json() -> ResponseReturnValue:
    """This API's description, built from the code."""
    return jsonify(document(current_app))


@bp.get("/docs")
@documented(resp=Described(HTTP_200=(None, "An HTML page; its files come from this server.")))
def page() -> ResponseReturnValue:
    """This API's description as a page (Swagger UI): every endpoint, and "Try it out"."""
    config = {
        "url": url_for("docs.openapi_json"),
        "dom_id": "#swagger-ui",
        "deepLinking": True,
        # Swagger UI's default asks an online validator for a badge: no request leaves the page.
        "validatorUrl": None,
    }
    body = _PAGE.format(
        title="lambdarec serving API",
        css=url_for("docs.asset", name="swagger-ui.css"),
        icon=url_for("docs.asset", name="favicon-32x32.png"),
        js=url_for("docs.asset", name="swagger-ui-bundle.js"),
        config=json.dumps(config).replace("<", "\\u003c"),
    )
    return Response(body, mimetype="text/html")


@bp.get("/docs/<path:name>")
@documented(
    path_parameter_descriptions={"name": "A file of the Swagger UI distribution."},
    resp=Described(
        HTTP_200=(None, "The file (Swagger UI's scripts, styles, icons, LICENSE)."),
        HTTP_404=(Error, "No such file."),
    ),
)
def asset(name: str) -> ResponseReturnValue:
    """A file of the docs page, from the installed Swagger UI distribution."""
    return send_from_directory(_assets(), name)
