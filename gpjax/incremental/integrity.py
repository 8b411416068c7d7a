"""What a store version's files should hold, recorded when it is written and checked on use.

A version folder holds ``checkpoint/`` (Orbax), ``manifest.json`` and ``manifest.sha256``::

    versions/0001/manifest.json     ... "integrity": {"algorithm": "sha256",
                                          "files": {"checkpoint/0/...": {"sha256", "size"}}}
    versions/0001/manifest.sha256   the SHA-256 of manifest.json's bytes (written last)

:func:`record` digests every file of the checkpoint (before the manifest is written);
:func:`check_version` reads them back: the manifest against its sidecar, each recorded file
against its size and digest. A version written before digests were recorded (no
``integrity`` key, no sidecar) is reported as ``"no_digests"``, never as damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
CHECKPOINT = "checkpoint"
ALGORITHM = "sha256"

OK = "ok"
DAMAGED = "damaged"
NO_DIGESTS = "no_digests"


class Damage(NamedTuple):
    """One damaged file of a version.

    Attributes:
      file: its path relative to the store (``versions/0001/checkpoint/...``).
      reason: what is wrong ("missing", "size 100, recorded 4096", "content differs"...).
    """

    file: str
    reason: str


class VersionCheck(NamedTuple):
    """The state of one version's files.

    Attributes:
      version: the version number.
      status: ``"ok"``, ``"damaged"`` or ``"no_digests"`` (written before digests existed).
      damage: every damaged file (empty unless damaged).
      files: how many files were checked against their digests.
    """

    version: int
    status: str
    damage: tuple[Damage, ...] = ()
    files: int = 0

    @property
    def healthy(self) -> bool:
        """Not known to be damaged (``ok`` or ``no_digests``)."""
        return self.status != DAMAGED

    def describe(self) -> str:
        """The first damaged file and why (``versions/0001/manifest.json: not JSON``)."""
        if not self.damage:
            return ""
        d = self.damage[0]
        more = len(self.damage) - 1
        return f"{d.file} ({d.reason})" + (f" and {more} more file(s)" if more else "")


class VerifyResult(NamedTuple):
    """What :meth:`gpjax.incremental.store.ModelStore.verify` found.

    Attributes:
      store: the store directory.
      versions: one check per version folder, oldest first.
      problems: what is wrong beyond the versions' files (``LATEST`` missing or dangling).
    """

    store: Path
    versions: tuple[VersionCheck, ...]
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No version is damaged and ``LATEST`` names a version the store holds."""
        return all(v.healthy for v in self.versions) and not self.problems

    @property
    def damaged(self) -> tuple[VersionCheck, ...]:
        """The damaged versions."""
        return tuple(v for v in self.versions if not v.healthy)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def record(version_dir: Path) -> dict:
    """The ``integrity`` entry of a manifest: every file under ``version_dir/checkpoint``.

    Args:
      version_dir: the (staging) folder of a version, its checkpoint complete.

    Returns:
      ``{"algorithm": "sha256", "files": {relative path: {"sha256", "size"}}}``.
    """
    files = {}
    for p in sorted((version_dir / CHECKPOINT).rglob("*")):
        if p.is_file():
            files[p.relative_to(version_dir).as_posix()] = {"sha256": sha256_file(p),
                                                           "size": p.stat().st_size}
    return {"algorithm": ALGORITHM, "files": files}


def manifest_digest(text: str) -> str:
    """The sidecar's content for a manifest's text: its SHA-256 and a newline."""
    return hashlib.sha256(text.encode()).hexdigest() + "\n"


def _read_manifest(vdir: Path, rel: str) -> tuple[dict | None, list[Damage]]:
    """The manifest, checked against its sidecar; ``(None, damage)`` when unusable."""
    f, side = vdir / MANIFEST, vdir / MANIFEST_DIGEST
    try:
        raw = f.read_bytes()
    except OSError as e:
        return None, [Damage(f"{rel}/{MANIFEST}", f"cannot be read: {e.strerror or e}")]
    want = None
    if side.exists():
        try:
            want = side.read_text().strip()
        except OSError as e:
            return None, [Damage(f"{rel}/{MANIFEST_DIGEST}", f"cannot be read: {e.strerror}")]
    if want is not None and hashlib.sha256(raw).hexdigest() != want:
        return None, [Damage(f"{rel}/{MANIFEST}", "content differs from its recorded digest")]
    try:
        manifest = json.loads(raw)
        assert isinstance(manifest, dict)
    except (ValueError, AssertionError):
        return None, [Damage(f"{rel}/{MANIFEST}", "not a JSON manifest (truncated?)")]
    if want is None and "integrity" in manifest:
        return None, [Damage(f"{rel}/{MANIFEST_DIGEST}", "missing")]
    return manifest, []


def _check_file(vdir: Path, rel: str, name: str, want: dict) -> Damage | None:
    p = vdir / name
    where = f"{rel}/{name}"
    try:
        size = p.stat().st_size
    except OSError:
        return Damage(where, "missing")
    if size != want["size"]:
        return Damage(where, f"{size} bytes, recorded {want['size']}")
    try:
        got = sha256_file(p)
    except OSError as e:
        return Damage(where, f"cannot be read: {e.strerror or e}")
    return None if got == want["sha256"] else Damage(where, "content differs from its digest")


def check_version(store: Path, version_dir: Path, *,
                  files: bool = True) -> tuple[VersionCheck, dict | None]:
    """Checks one version folder against what was recorded when it was written.

    Args:
      store: the store directory (paths are reported relative to it).
      version_dir: ``store/versions/NNNN``.
      files: check the checkpoint's files too (False: the manifest only).

    Returns:
      ``(check, manifest)``; ``manifest`` is None when it cannot be read intact.
    """
    v = int(version_dir.name)
    rel = version_dir.relative_to(store).as_posix()
    manifest, damage = _read_manifest(version_dir, rel)
    if manifest is None:
        return VersionCheck(v, DAMAGED, tuple(damage)), None
    integrity = manifest.get("integrity")
    if not files:
        return VersionCheck(v, OK if integrity else NO_DIGESTS), manifest
    if integrity is None:
        if not (version_dir / CHECKPOINT).is_dir():
            return VersionCheck(v, DAMAGED, (Damage(f"{rel}/{CHECKPOINT}", "missing"),)), None
        return VersionCheck(v, NO_DIGESTS), manifest
    files = integrity.get("files", {})
    found = [d for name, want in sorted(files.items())
             if (d := _check_file(version_dir, rel, name, want)) is not None]
    if found:
        return VersionCheck(v, DAMAGED, tuple(found), len(files)), manifest
    return VersionCheck(v, OK, (), len(files)), manifest


__all__ = ["Damage", "VerifyResult", "VersionCheck", "check_version", "manifest_digest",
           "record", "sha256_file"]
