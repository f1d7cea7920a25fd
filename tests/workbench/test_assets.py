"""The workbench's static files, without a browser: vendored files unchanged, nothing inline
(the CSP forbids inline scripts and styles), nothing from another origin (works offline), every
file the page names present."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from zoomearth.server.workbench import STATIC_DIR

VENDOR_README = STATIC_DIR / "vendor" / "README.md"
OWN_MODULES = ["app.js", "api.js", "map.js", "layers.js", "swipe.js", "chat.js", "dom.js"]


def _vendored() -> list[tuple[str, str]]:
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|$",
                      VENDOR_README.read_text(encoding="utf-8"), flags=re.M)
    assert rows, f"no checksum table in {VENDOR_README}"
    return rows


@pytest.mark.parametrize(("rel", "sha256"), _vendored())
def test_vendored_file_matches_its_recorded_checksum(rel: str, sha256: str) -> None:
    data = (STATIC_DIR / "vendor" / rel).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256, (
        f"vendor/{rel} differs from the npm release recorded in vendor/README.md; update the "
        "table when updating Leaflet (see its 'Update' section)")


def test_page_has_no_inline_script_or_style_and_names_existing_files() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert "<style" not in html and " style=" not in html
    for m in re.finditer(r"<script([^>]*)>(.*?)</script>", html, flags=re.S):
        assert "src=" in m.group(1) and not m.group(2).strip(), m.group(0)
    assert not re.search(r"\son[a-z]+=", html), "inline event handler attribute"
    refs = re.findall(r'(?:src|href)="(/workbench/static/[^"]+)"', html)
    assert len(refs) >= 4
    for ref in refs:
        assert (STATIC_DIR / ref.removeprefix("/workbench/static/")).is_file(), ref


def test_own_files_load_nothing_from_another_origin() -> None:
    for name in [*OWN_MODULES, "app.css", "index.html"]:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, flags=re.I), name
        assert "@import" not in text, name


def test_modules_import_only_each_other() -> None:
    for name in OWN_MODULES:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        for target in re.findall(r'^import .* from "([^"]+)";$', text, flags=re.M):
            assert target.startswith("./") and (STATIC_DIR / target[2:]).is_file(), (name, target)


def test_leaflet_css_images_are_shipped() -> None:
    css = (STATIC_DIR / "vendor" / "leaflet" / "leaflet.css").read_text(encoding="utf-8")
    for ref in set(re.findall(r"url\(([^)]+)\)", css)):
        ref = ref.strip("'\"")
        if ref.startswith(("data:", "#")):
            continue
        assert (STATIC_DIR / "vendor" / "leaflet" / ref).is_file(), ref


def test_static_dir_is_inside_the_package() -> None:
    assert Path(STATIC_DIR).is_dir()
    assert STATIC_DIR.name == "static" and STATIC_DIR.parent.name == "workbench"
