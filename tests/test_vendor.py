"""web/vendor/tasks-vision: the committed files match SHA256SUMS, and the README, the re-fetch script
and the vendored package.json agree on the pinned version and tarball hashes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "web" / "vendor" / "tasks-vision"
SCRIPT = ROOT / "scripts" / "vendor_tasks_vision.sh"
OURS = {"README.md", "SHA256SUMS"}


def _sums() -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line)
        assert match, f"malformed SHA256SUMS line: {line!r}"
        digest, name = match.groups()
        assert name not in sums, f"{name} listed twice"
        sums[name] = digest
    return sums


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _script_pin(name: str) -> str:
    match = re.search(rf'^{name}="([^"]+)"$', SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{SCRIPT.name} pins no {name}"
    return match.group(1)


def _readme_field(label: str) -> str:
    match = re.search(
        rf"^- \*\*{re.escape(label)}:\*\* `([^`]+)`",
        (VENDOR / "README.md").read_text(),
        re.MULTILINE,
    )
    assert match, f"README.md has no '- **{label}:** `...`' line"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(_sums()))
def test_sha256sums_entry_matches_the_file(name: str) -> None:
    path = VENDOR / name
    assert path.is_file(), f"{name} is in SHA256SUMS but not on disk"
    assert _sha256(path) == _sums()[name], f"{name} differs from SHA256SUMS (run `make vendor`)"


def test_every_vendored_file_is_listed() -> None:
    on_disk = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()}
    unlisted = sorted(on_disk - OURS - set(_sums()))
    assert not unlisted, f"files not in SHA256SUMS: {unlisted}"
    assert {
        "vision_bundle.mjs",
        "wasm/vision_wasm_internal.js",
        "wasm/vision_wasm_internal.wasm",
    } <= on_disk


def test_pinned_version_agrees() -> None:
    package = json.loads((VENDOR / "package.json").read_text())
    assert package["name"] == "@mediapipe/tasks-vision" == _readme_field("Package")
    assert package["version"] == _readme_field("Version") == _script_pin("VERSION")


def test_pinned_tarball_hashes_agree() -> None:
    assert _readme_field("shasum (sha1)") == _script_pin("SHASUM")
    assert _readme_field("integrity") == _script_pin("INTEGRITY")
