"""Data Docs offline: CDN links rewritten to the vendored copies, relative to each page, and the
vendored folder (fetched by `make setup`) holds every file the links name, each package with its
licence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambdarec.config import Settings
from lambdarec.quality.offline import (
    LINKS,
    MANIFEST,
    PACKAGES,
    assets_ready,
    external_loads,
    rewrite_docs,
    rewrite_page,
)

PAGE = """<html><head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<script src="https://cdn.jsdelivr.net/npm/vega-lite@5"></script>
<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" crossorigin="anonymous"></script>
</head><body>
<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1&dataContextId=2">
<a href="https://greatexpectations.io">GX</a>
<script src="https://example.invalid/unknown.js"></script>
</body></html>"""


def test_a_page_deep_in_the_docs_loads_the_vendored_files_relative_to_itself() -> None:
    out = rewrite_page(PAGE, "data_docs/validations/t/run/stamp/page.html")
    up = "../../../../../"
    assert f'href="{up}vendor/bootstrap/dist/css/bootstrap.min.css"' in out
    assert f'src="{up}vendor/vega-lite/build/vega-lite.min.js"' in out
    # The CDN's subresource hash names the CDN's bytes: dropped with the link.
    assert f'<script src="{up}vendor/bootstrap/dist/js/bootstrap.min.js"></script>' in out
    assert 'src="../../../../static/images/logo-long.png"' in out
    # Links to read (anchors) and unknown hosts are left as they are, and reported.
    assert 'href="https://greatexpectations.io"' in out
    assert external_loads(out) == ["https://example.invalid/unknown.js"]


def test_the_index_page_and_a_second_pass(tmp_path: Path) -> None:
    docs = tmp_path / "data_docs"
    (docs / "expectations").mkdir(parents=True)
    (docs / "index.html").write_text(PAGE)
    (docs / "expectations" / "suite.html").write_text(PAGE)
    changed = rewrite_docs(docs)
    assert changed == [docs / "expectations" / "suite.html", docs / "index.html"]
    index = (docs / "index.html").read_text()
    assert 'src="../vendor/vega-lite/build/vega-lite.min.js"' in index
    assert 'src="static/images/logo-long.png"' in index
    assert (
        'href="../../vendor/bootstrap/dist/css/bootstrap.min.css"'
        in (docs / "expectations" / "suite.html").read_text()
    )
    assert rewrite_docs(docs) == []  # already local: nothing to write


def test_every_gx_cdn_link_of_the_installed_templates_is_mapped() -> None:
    import importlib.util
    import re

    spec = importlib.util.find_spec("great_expectations")  # found, not imported (~10 s)
    assert spec is not None and spec.origin
    templates = Path(spec.origin).parent / "render" / "view" / "templates"
    named = set()
    for path in templates.glob("*.j2"):
        for tag in re.findall(r"<(?:script|link)\b[^>]*>", path.read_text()):
            named.update(re.findall(r"""(?:src|href)=["'](https?://[^"']+)["']""", tag))
    assert named, "no CDN link found: the templates moved"
    assert named - set(LINKS) == set()


def test_the_vendored_folder_holds_every_linked_file_with_its_licence() -> None:
    folder = Settings().web_assets_dir
    if not (folder / MANIFEST).is_file():
        pytest.fail(f"{folder} is empty: `make setup` (lambdarec quality fetch-assets) fills it")
    assert assets_ready(folder)
    assert json.loads((folder / MANIFEST).read_text()) == {p.name: p.version for p in PACKAGES}
    for package in PACKAGES:
        beside = {p.name.lower() for p in (folder / package.folder).iterdir()}
        assert "package.json" in beside
        assert any(n.startswith(("license", "licence")) for n in beside), package.spec
    fonts = folder / "fortawesome-fontawesome-free" / "webfonts"
    assert any(fonts.glob("*.woff2"))
