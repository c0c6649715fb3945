"""Style sessions: one source clip, a gallery of edits with their settings, saved on disk, exported as one zip.

A session is a folder under a sessions root:

    <root>/<name>/session.json        name, subject, source file name, owner (hashed), entries
    <root>/<name>/source<.ext>        a copy of the source clip (a name the store chooses)
    <root>/<name>/entries/<id>/...    each edit's files (mp4, gif, zip of frames)

The app keeps each owner's sessions in a store of their own, `store.owned(key)`: the folder
`<root>/by-owner/<sha256 of the key>/`, so one owner can neither list, open nor guess another's
sessions, and names never collide between owners. The key is a random secret the owner's browser
keeps; only its hash is on disk (also in each manifest, checked on open).

New prompts on the same session reuse the source's DDIM inversion through the pipeline's content-keyed
cache (the key depends on the clip's bytes, frames, size, model and steps, not on the edit prompt).
Names are checked so that no session can read or write outside the root. A session's clip must decode as
a video, and an import holds only the kinds of file the app writes (mp4, gif, zip, png, json).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .cache import default_cache_dir
from .config import FrameSelection, VideoLimits
from .errors import ConfigError, EditingError
from .files import atomic_output
from .video_io import probe, read_clip

MANIFEST = "session.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")
MAX_IMPORT_BYTES = 2 * 1024**3  # an imported zip may unpack to at most this much
OWNERS = "by-owner"  # <root>/by-owner/<hash of the owner's key>/<session name>/
OWNER_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,128}")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif")  # a source copy keeps its kind, nothing else
ENTRY_SUFFIXES = (".mp4", ".gif", ".zip", ".png", ".json")  # the kinds of file an edit writes
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# One-click styles: each runs as its own edit and becomes its own gallery entry.
PRESETS: dict[str, str] = {
    "watercolor": "a watercolor painting",
    "anime": "an anime illustration, cel shading",
    "oil painting": "an oil painting with thick brush strokes",
    "pixel art": "pixel art, 16-bit video game",
    "pencil sketch": "a pencil sketch, graphite on paper",
    "ukiyo-e": "an ukiyo-e woodblock print",
    "claymation": "claymation, plasticine figures",
}


def preset_prompt(preset: str, subject: str = "") -> str:
    """The prompt a style preset gives for a session's subject (e.g. 'a man skiing')."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown style preset {preset!r}; choose from {', '.join(PRESETS)}")
    subject = subject.strip()
    return f"{PRESETS[preset]} of {subject}" if subject else PRESETS[preset]


def check_name(name: str) -> str:
    """A session name that is a plain folder name: letters, digits, space, '_', '.', '-'; no path, no '..'."""
    name = (name or "").strip()
    if not NAME_PATTERN.fullmatch(name) or ".." in name or name.endswith("."):
        raise ConfigError(
            f"session name {name!r} must be 1-64 letters, digits, spaces, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def new_owner_key() -> str:
    """A fresh random owner secret (256 bits), kept by the owner's browser; the server stores only its hash."""
    return secrets.token_urlsafe(32)


def is_owner_key(key: object) -> bool:
    """Whether `key` has the shape of an owner secret (anything else gets a fresh one)."""
    return isinstance(key, str) and OWNER_KEY_PATTERN.fullmatch(key) is not None


def owner_hash(key: str) -> str:
    """The stored form of an owner secret: its SHA-256, hex."""
    if not is_owner_key(key):
        raise ConfigError("the session owner key must be 32-128 letters, digits, '_' or '-'")
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def check_source_video(video: Path, limits: VideoLimits = VideoLimits()) -> None:
    """Refuse a file as a session's clip unless it decodes as a video, with the same checks as an edit."""
    info = probe(video, limits)
    read_clip(video, FrameSelection(max_frames=2, size=64), limits, info)


def default_root() -> Path:
    """$EDITING_SESSIONS_DIR, else `sessions/` in the editing cache folder."""
    if os.environ.get("EDITING_SESSIONS_DIR"):
        return Path(os.environ["EDITING_SESSIONS_DIR"])

    return default_cache_dir() / "sessions"


@dataclass
class Entry:
    """One edit in a session's gallery: what was asked, the files made, what the pipeline reported."""

    id: str
    prompt: str
    settings: dict[str, Any]
    files: dict[str, str]  # suffix -> file name inside the entry's folder
    result: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    created: float = field(default_factory=time.time)


@dataclass
class Session:
    """A source clip and the edits made from it; `folder` is where it lives."""

    name: str
    folder: Path
    source: str  # file name of the source copy inside the folder
    subject: str = ""
    entries: list[Entry] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def source_path(self) -> Path:
        return self.folder / self.source

    def entry_dir(self, entry_id: str) -> Path:
        return self.folder / "entries" / entry_id

    def file(self, entry: Entry, suffix: str) -> Path | None:
        """The path of an entry's file of that format, if it has one."""
        name = entry.files.get(suffix)
        return None if name is None else self.entry_dir(entry.id) / name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "subject": self.subject,
            "created": self.created,
            "entries": [asdict(e) for e in self.entries],
        }


class SessionStore:
    """Sessions under one root folder: create, open, list, record edits, export and import."""

    def __init__(self, root: str | os.PathLike | None = None, owner: str | None = None, limits: VideoLimits = VideoLimits()):
        self.root = Path(root) if root is not None else default_root()
        self.owner = owner  # the owner's hashed key when this is one owner's store (see `owned`)
        self.limits = limits

    def owned(self, key: str) -> SessionStore:
        """The store of the sessions whose owner holds `key`: its own folder, named by the key's hash."""
        digest = owner_hash(key)
        return SessionStore(self.root / OWNERS / digest, owner=digest, limits=self.limits)

    def folder(self, name: str) -> Path:
        """The folder of a session, guaranteed to be directly inside the root."""
        name = check_name(name)
        root = self.root.resolve()
        folder = (root / name).resolve()
        if folder.parent != root:
            raise ConfigError(f"session name {name!r} leaves the sessions folder")
        return folder

    def names(self) -> list[str]:
        """Saved sessions, newest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if (p / MANIFEST).is_file()]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def create(self, name: str, video: str | os.PathLike, subject: str = "") -> Session:
        """A new session holding a copy of `video`, which must decode as a video; an existing name is refused."""
        folder = self.folder(name)
        if folder.exists():
            raise ConfigError(f"a session named {folder.name!r} exists already; open it or choose another name")
        video = Path(video)
        if not video.is_file():
            raise EditingError(f"{video.name} does not exist or is not a file")
        check_source_video(video, self.limits)
        folder.mkdir(parents=True)
        source = "source" + (video.suffix.lower() if video.suffix.lower() in VIDEO_SUFFIXES else ".mp4")
        session = Session(folder.name, folder, source, subject.strip())
        try:
            shutil.copy2(video, folder / source)
            self.save(session)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no half-made session blocks the name
            raise
        return session

    def open(self, name: str) -> Session:
        """A saved session, as it was last saved."""
        folder = self.folder(name)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise EditingError(f"no session named {folder.name!r}")
        try:
            data = json.loads(manifest.read_text())
            if self.owner is not None and not hmac.compare_digest(str(data.get("owner", "")), self.owner):
                raise EditingError(f"no session named {folder.name!r}")  # a folder moved in by hand: not this owner's
            entries = [Entry(**e) for e in data.get("entries", [])]
            session = Session(
                folder.name, folder, _plain_file_name(data["source"]), data.get("subject", ""), entries, data.get("created", 0.0)
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EditingError(f"session {folder.name!r} has an unreadable {MANIFEST} ({type(exc).__name__})") from exc
        for entry in session.entries:
            _plain_file_name(entry.id)
            for file_name in entry.files.values():
                _plain_file_name(file_name)
        return session

    def save(self, session: Session) -> None:
        """Write the manifest atomically (with the owner's hashed key in an owner's store)."""
        data = session.to_json() | ({} if self.owner is None else {"owner": self.owner})
        with atomic_output(session.folder / MANIFEST) as partial:
            partial.write_text(json.dumps(data, indent=2))

    def new_entry_dir(self, session: Session) -> tuple[str, Path]:
        """A fresh id and empty folder for the next edit's files."""
        entry_id = f"{len(session.entries) + 1:03d}-{uuid.uuid4().hex[:6]}"
        folder = session.entry_dir(entry_id)
        folder.mkdir(parents=True)
        return entry_id, folder

    def add_entry(self, session: Session, entry: Entry) -> Entry:
        """Record a finished edit whose files are already in its entry folder, and save."""
        for file_name in entry.files.values():
            if not (session.entry_dir(entry.id) / _plain_file_name(file_name)).is_file():
                raise EditingError(f"entry {entry.id} lists {file_name}, which is not in its folder")
        session.entries.append(entry)
        self.save(session)
        return entry

    def export(self, name: str, destination: str | os.PathLike) -> Path:
        """The whole session (manifest, source, every entry's files) as one zip."""
        session = self.open(name)
        destination = Path(destination)
        with atomic_output(destination) as partial:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(MANIFEST, json.dumps(session.to_json(), indent=2))
                archive.write(session.source_path, session.source)
                for entry in session.entries:
                    for file_name in entry.files.values():
                        archive.write(session.entry_dir(entry.id) / file_name, f"entries/{entry.id}/{file_name}")
        return destination

    def import_zip(self, archive_path: str | os.PathLike, name: str | None = None) -> Session:
        """A session from an exported zip, under `name` (default: the name it was exported with)."""
        archive_path = Path(archive_path)
        try:
            archive = zipfile.ZipFile(archive_path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise EditingError(f"{archive_path.name} is not a session export (not a readable zip)") from exc
        with archive:
            manifest = _read_manifest(archive, archive_path.name)
            folder = self.folder(name or manifest.get("name", ""))
            if folder.exists():
                raise ConfigError(f"a session named {folder.name!r} exists already; import it under another name")
            members = _checked_members(archive, manifest)
            self.root.mkdir(parents=True, exist_ok=True)
            needed = sum(archive.getinfo(m).file_size for m in members)
            if needed > shutil.disk_usage(self.root).free:
                raise EditingError(f"{archive_path.name} unpacks to {needed / 1e6:.0f} MB, more than the free disk space")
            staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.root))
            try:
                for member in members:
                    target = staging.joinpath(*PurePosixPath(member).parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        with archive.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
                        # A member that unpacks beyond its declared size fails its CRC check here.
                        raise EditingError(f"{archive_path.name} is damaged: {member} does not unpack ({_reason(exc)})") from exc
                _check_unpacked(staging, manifest, self.limits)
                manifest["name"] = folder.name
                manifest.pop("owner", None)
                if self.owner is not None:
                    manifest["owner"] = self.owner
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.open(folder.name)

    def adopt_unowned(self, into: SessionStore) -> list[str]:
        """Move the sessions made before owners existed (directly in this root) into an owner's store; the
        names moved. Only for an app served on this machine alone, whose one user made them."""
        moved = []
        for name in self.names():
            source, target = self.folder(name), into.folder(name)
            if target.exists():
                continue  # the owner has a session of that name: leave the old one where it is
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
                into.save(into.open_unchecked(name))
            except (OSError, EditingError):  # another page load moved it first, or it is unreadable: leave it
                continue
            moved.append(name)
        return moved

    def open_unchecked(self, name: str) -> Session:
        """A session read without the owner check (to stamp an adopted one with its new owner)."""
        return SessionStore(self.root, owner=None, limits=self.limits).open(name)

    def delete(self, name: str) -> None:
        """Remove a session and its files."""
        shutil.rmtree(self.folder(name), ignore_errors=True)


def _plain_file_name(name: str) -> str:
    """`name` if it is a single plain file name (no separators, not '.', '..')."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise EditingError(f"session file name {name!r} is not a plain file name")
    return name


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


def _kind_of(name: str, allowed: tuple[str, ...], what: str) -> str:
    """`name` if it is a plain file name whose suffix is one of `allowed`."""
    _plain_file_name(name)
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in allowed:
        raise EditingError(f"session file {name!r} is not allowed: {what} must be one of {', '.join(allowed)}")
    return name


def _check_unpacked(staging: Path, manifest: dict[str, Any], limits: VideoLimits) -> None:
    """The unpacked files are what their names say: the source and each mp4 or gif decode, PNGs are PNGs."""
    check_source_video(staging / manifest["source"], limits)
    for entry in manifest.get("entries", []):
        for file_name in entry.get("files", {}).values():
            path = staging / "entries" / entry["id"] / file_name
            suffix = path.suffix.lower()
            if suffix in (".mp4", ".gif"):
                probe(path, limits)
            elif suffix == ".png" and path.read_bytes()[: len(PNG_MAGIC)] != PNG_MAGIC:
                raise EditingError(f"session file {file_name!r} is named .png but is not a PNG image")
            elif suffix == ".zip" and not zipfile.is_zipfile(path):
                raise EditingError(f"session file {file_name!r} is named .zip but is not a zip")
            elif suffix == ".json":
                try:
                    json.loads(path.read_text())
                except (ValueError, UnicodeDecodeError):
                    raise EditingError(f"session file {file_name!r} is named .json but is not JSON") from None


def _read_manifest(archive: zipfile.ZipFile, label: str) -> dict[str, Any]:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise EditingError(f"{label} is not a session export (no {MANIFEST} inside)") from None
    except ValueError as exc:
        raise EditingError(f"{label} has an unreadable {MANIFEST}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("source"), str):
        raise EditingError(f"{label} has an unreadable {MANIFEST}")
    _parsed_entries(manifest, label)
    return manifest


def _parsed_entries(manifest: dict[str, Any], label: str) -> list[Entry]:
    """The manifest's entries as Entry records with plain file names; EditingError if any is malformed."""
    entries = manifest.get("entries", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("files", {}), dict) for e in entries):
        raise EditingError(f"{label} has an unreadable {MANIFEST} (entries must be a list of records)")
    _kind_of(manifest["source"], VIDEO_SUFFIXES, "the source clip")
    for entry in entries:
        _plain_file_name(entry.get("id"))
        for file_name in entry.get("files", {}).values():
            _kind_of(file_name, ENTRY_SUFFIXES, "an edit's files")
    try:
        return [Entry(**e) for e in entries]
    except TypeError:
        raise EditingError(f"{label} has an unreadable {MANIFEST} (an entry lacks or adds fields)") from None


def _checked_members(archive: zipfile.ZipFile, manifest: dict[str, Any]) -> list[str]:
    """The files the manifest names, each present, each a plain relative path, within the size cap."""
    wanted = [_plain_file_name(manifest["source"])]
    for entry in manifest.get("entries", []):
        entry_id = _plain_file_name(entry.get("id"))
        wanted += [f"entries/{entry_id}/{_plain_file_name(f)}" for f in entry.get("files", {}).values()]
    present = {info.filename: info for info in archive.infolist()}
    missing = [m for m in wanted if m not in present]
    if missing:
        raise EditingError(f"the session export lacks {missing[0]}")
    total = sum(present[m].file_size for m in wanted)
    if total > MAX_IMPORT_BYTES:
        raise EditingError(f"the session export unpacks to more than {MAX_IMPORT_BYTES / 1024**3:g} GB, the limit")
    return wanted
