"""Data Docs without internet: the CSS and JS they load, vendored from npm, and links rewritten.

Great Expectations' Data Docs pages load bootstrap, bootstrap-table, font-awesome, jQuery,
popper, bootstrap-datepicker and vega from public CDNs; offline they render unstyled and the
validation-results table (drawn by bootstrap-table) stays empty. :func:`fetch_assets`
(``lambdarec quality fetch-assets``, run by ``make setup``) unpacks the same versions from their
npm packages (``npm pack``, the npm registry only) into ``settings.web_assets_dir``, each package
in its own folder with its ``package.json`` and licence files beside the files. The reports site
serves that folder as ``/vendor/``. :func:`rewrite_docs` runs after every Data Docs build
(:func:`lambdarec.quality.runner.validate`) and points each page's CDN links at
``../vendor/...`` relative to the page (``integrity``/``crossorigin`` dropped: the hashes name
the CDN's bytes), and GX's logo at the copy GX itself writes into ``static/images/``.

Nothing here imports GX. A page is read and written only when it still names a CDN.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: The site path the assets are served under (a link in ``site_dir``).
VENDOR = "vendor"
#: Written last by :func:`fetch_assets`: what was fetched, so a ready folder is skipped.
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Package:
    """One npm package: the files kept (paths inside the package; ``dir/*`` keeps a folder)."""

    name: str
    version: str
    files: tuple[str, ...]

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        """Its folder under the assets dir (``@scope/name`` -> ``scope-name``)."""
        return self.name.lstrip("@").replace("/", "-")


#: The versions GX 1.x's templates name (vega-lite@5 etc. pinned to a release of that major).
PACKAGES = (
    Package("bootstrap", "4.3.1", ("dist/css/bootstrap.min.css", "dist/js/bootstrap.min.js")),
    Package(
        "bootstrap-table",
        "1.19.1",
        (
            "dist/bootstrap-table.min.css",
            "dist/bootstrap-table.min.js",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
        ),
    ),
    Package(
        "bootstrap-datepicker",
        "1.9.0",
        ("dist/css/bootstrap-datepicker.min.css", "dist/js/bootstrap-datepicker.min.js"),
    ),
    Package("@forevolve/bootstrap-dark", "1.1.0", ("dist/css/bootstrap-prefers-dark.css",)),
    Package("@fortawesome/fontawesome-free", "6.6.0", ("css/all.min.css", "webfonts/*")),
    Package("jquery", "3.7.1", ("dist/jquery.min.js",)),
    Package("popper.js", "1.12.9", ("dist/umd/popper.min.js",)),
    Package("vega", "5.33.1", ("build/vega.min.js",)),
    Package("vega-lite", "5.23.0", ("build/vega-lite.min.js",)),
    Package("vega-embed", "6.29.0", ("build/vega-embed.min.js",)),
)

_BY_NAME = {p.name: p for p in PACKAGES}


def _asset(package: str, path: str) -> str:
    return f"{_BY_NAME[package].folder}/{path}"


#: CDN URL (query string dropped) -> the file under the assets dir.
LINKS: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": _asset(
        "bootstrap", "dist/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": _asset(
        "bootstrap", "dist/js/bootstrap.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": _asset(
        "bootstrap-table", "dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": _asset(
        "bootstrap-table", "dist/bootstrap-table.min.js"
    ),
    # GX's templates name 1.19.0 for the extension's CSS (1.19.1 for the rest): one copy serves.
    **{
        f"https://unpkg.com/bootstrap-table@{v}/dist/extensions/filter-control/"
        f"bootstrap-table-filter-control{ext}": _asset(
            "bootstrap-table",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
        )
        for v in ("1.19.0", "1.19.1")
        for ext in (".css", ".min.css")
    },
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": _asset(
        "bootstrap-table", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": _asset(
        "bootstrap-datepicker", "dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": _asset(
        "bootstrap-datepicker", "dist/js/bootstrap-datepicker.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": _asset(
        "@forevolve/bootstrap-dark", "dist/css/bootstrap-prefers-dark.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": _asset(
        "@fortawesome/fontawesome-free", "css/all.min.css"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": _asset("jquery", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": _asset(
        "popper.js", "dist/umd/popper.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": _asset("vega", "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": _asset("vega-lite", "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": _asset("vega-embed", "build/vega-embed.min.js"),
}
#: GX's logo, from its S3 bucket; the same image is in the docs' own ``static/images/``.
_LOGO = re.compile(r"^https://great-expectations-web-assets\.s3[.\w-]*\.amazonaws\.com/([\w.-]+)$")
#: An external ``src``/``href`` attribute (with its quote) inside a tag.
_ATTR = re.compile(r"""\b(src|href)=(["'])(https?://[^"']+)\2""")
_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>", re.IGNORECASE)
_SRI = re.compile(r"""\s+(?:integrity|crossorigin)(?:=(["'])[^"']*\1)?""")


class AssetsError(RuntimeError):
    """The assets could not be fetched or are missing (the message says what to do)."""


# -- fetching ----------------------------------------------------------------------------------


def assets_ready(folder: Path) -> bool:
    """Whether ``folder`` holds every package of :data:`PACKAGES` at its version."""
    try:
        fetched = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return fetched == {p.name: p.version for p in PACKAGES} and all(
        (folder / path).is_file() for path in LINKS.values()
    )


def _keep(member: str, package: Package) -> bool:
    path = PurePosixPath(member)
    if path.parent == PurePosixPath(".") and (
        path.name == "package.json" or path.name.lower().startswith(("license", "licence"))
    ):
        return True
    for wanted in package.files:
        if wanted.endswith("/*"):
            if path.parent == PurePosixPath(wanted[:-2]):
                return True
        elif member == wanted:
            return True
    return False


def _unpack(tarball: Path, package: Package, target: Path) -> None:
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[1] if "/" in member.name else member.name
            if (
                not member.isfile()
                or ".." in PurePosixPath(inner).parts
                or not _keep(inner, package)
            ):
                continue
            out = target / inner
            out.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                continue
            with source, out.open("wb") as sink:
                shutil.copyfileobj(source, sink)
    missing = [f for f in package.files if not f.endswith("/*") and not (target / f).is_file()]
    if missing:
        raise AssetsError(f"npm package {package.spec} has no {', '.join(missing)}")
    if not any(p.name.lower().startswith(("license", "licence")) for p in target.iterdir()):
        # Some packages declare their licence only in package.json: say so in a file beside them.
        declared = json.loads((target / "package.json").read_text()).get("license", "unknown")
        (target / "LICENSE").write_text(
            f"{package.spec} is licensed under {declared} (the 'license' field of its "
            "package.json, kept beside this file); the package ships no licence text.\n"
        )


def fetch_assets(folder: Path, *, npm: str = "npm", force: bool = False) -> bool:
    """Unpack :data:`PACKAGES` from the npm registry into ``folder``; False when it was ready.

    Uses ``npm pack`` (the npm client's own registry and cache settings); the folder is replaced
    whole, so an interrupted fetch never leaves a half-updated set.
    """
    if not force and assets_ready(folder):
        return False
    if shutil.which(npm) is None:
        raise AssetsError(
            f"{npm!r} not found: install Node.js's npm (apt-get install npm) to fetch the Data "
            "Docs' CSS/JS"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="web-assets-", dir=folder.parent) as scratch:
        packs, staged = Path(scratch) / "packs", Path(scratch) / "assets"
        packs.mkdir()
        done = subprocess.run(
            [npm, "pack", "--silent", "--json", *(p.spec for p in PACKAGES)],
            cwd=packs,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise AssetsError("`npm pack` failed: " + " | ".join(tail))
        by_spec = {
            f"{e['name']}@{e['version']}": packs / e["filename"] for e in json.loads(done.stdout)
        }
        for package in PACKAGES:
            tarball = by_spec.get(package.spec)
            if tarball is None or not tarball.is_file():
                raise AssetsError(f"`npm pack` did not return {package.spec}")
            _unpack(tarball, package, staged / package.folder)
        (staged / MANIFEST).write_text(
            json.dumps({p.name: p.version for p in PACKAGES}, indent=1) + "\n"
        )
        old = Path(scratch) / "old"
        if folder.exists():
            folder.rename(old)
        staged.rename(folder)
    return True


# -- rewriting ---------------------------------------------------------------------------------


def _relative(target: str, page: str) -> str:
    """``target`` (a path from the site's root) as seen from ``page`` (also from the root)."""
    return posixpath.relpath(target, posixpath.dirname(page))


def rewrite_page(text: str, page: str) -> str:
    """``text`` of the Data Docs page at site path ``page`` (``data_docs/...``) with its CDN
    links pointing at ``vendor/`` and GX's logo at ``data_docs/static/images/``."""

    def tag(match: re.Match[str]) -> str:
        original = match.group(0)

        def attr(found: re.Match[str]) -> str:
            url = found.group(3).split("?", 1)[0]
            local = LINKS.get(url)
            if local is not None:
                target = f"{VENDOR}/{local}"
            elif logo := _LOGO.match(url):
                target = f"data_docs/static/images/{logo.group(1)}"
            else:
                return found.group(0)
            quote = found.group(2)
            return f"{found.group(1)}={quote}{_relative(target, page)}{quote}"

        rewritten = _ATTR.sub(attr, original)
        return _SRI.sub("", rewritten) if rewritten != original else original

    return _TAG.sub(tag, text)


def rewrite_docs(docs_dir: Path, *, site_name: str = "data_docs") -> list[Path]:
    """Rewrite every page under ``docs_dir`` that still loads a CDN; returns those rewritten.

    Pages already rewritten are only read (GX rebuilds the index and the new validation's page
    on each run; older pages keep their local links).
    """
    changed = []
    for path in sorted(docs_dir.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        if "https://" not in text:
            continue
        page = f"{site_name}/{path.relative_to(docs_dir).as_posix()}"
        new = rewrite_page(text, page)
        if new != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(path)
            changed.append(path)
    return changed


def external_loads(text: str) -> list[str]:
    """The URLs a page still loads from another host (scripts, stylesheets, images)."""
    urls = []
    for match in _TAG.finditer(text):
        tag = match.group(0)
        for found in _ATTR.finditer(tag):
            if tag.lower().startswith("<link") and "stylesheet" not in tag.lower():
                continue
            urls.append(found.group(3))
    return urls


def offline_docs(settings: Settings) -> list[Path]:
    """:func:`rewrite_docs` on the settings' Data Docs; warns once when the assets are missing
    (the pages then name files the site cannot serve yet)."""
    if not assets_ready(settings.web_assets_dir):
        log.warning(
            "Data Docs: the vendored CSS/JS are missing from %s; run `make setup` (or "
            "`lambdarec quality fetch-assets`) so the pages render without internet",
            settings.web_assets_dir,
        )
    return rewrite_docs(settings.data_docs_dir)
