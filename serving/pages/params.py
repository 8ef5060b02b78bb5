"""Query-string validation shared by the pages' JSON endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.validation import RequestError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def query_params(args: Mapping[str, Sequence[str]], allowed: Sequence[str]) -> dict[str, str]:
    """The query string as one value per name; an unknown or repeated name is a 400."""
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise RequestError(unknown[0][:64], f"unknown query parameter; allowed: {listed}")
    out = {}
    for name, values in args.items():
        if len(values) > 1:
            raise RequestError(name, "given more than once; give it once")
        out[name] = values[0]
    return out


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """``params[name]`` as an integer in ``low..high`` (``default`` when absent)."""
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or not low <= int(raw) <= high:
        raise RequestError(name, f"must be an integer from {low} to {high}")
    return int(raw)
