"""The manifest: the typed, validated, checksummed record of one backup.

A backup exists iff its manifest exists; everything a later ``list``, ``verify``, ``restore`` or
``drill`` knows about it comes from here. ``dumps`` is the only way a manifest is written and
``loads`` the only way one is read, so what is checked on the way in is everything that is ever
used: a manifest may have been written by someone else (a copy, an offsite store, an attacker
with write access to the target), so every name that becomes a path is a single safe component
or a normalised relative path, every cross-reference resolves, and the content carries a
checksum of itself (as pgBackRest's info files do), so bit rot and hand edits are detected.

Format 2 (written): the model below, plus ``checksum`` = ``"sha256:" +`` the sha256 of the
canonical JSON (sorted keys, no spaces, ASCII with escapes) of every other field. Format 1 (snapagent 0.1,
read only): the same fields without a checksum, each volume's driver facts mixed into the volume
record; it is converted on read.

Runtime facts — which target holds a backup, where, the tar scan of a verified artifact — are not
manifest content; they travel beside it (``snapagent.plugin.target.Stored``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    ValidationError,
    model_serializer,
    model_validator,
)

from snapagent.errors import OperationFailed
from snapagent.util.names import check_abspath, check_backup_id, check_component, check_name, check_relpath, check_text

FORMAT = 2
READABLE_FORMATS = (1, 2)
MAX_BYTES = 16 << 20  # a manifest is small; a huge one is not ours


class ManifestDamaged(OperationFailed):
    """A manifest that does not parse, validate or match its checksum; the message says why."""


def iso(dt: datetime) -> str:
    """Return ``dt`` as the manifest writes times: UTC, milliseconds, ``Z``."""
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Name = Annotated[str, AfterValidator(check_name)]
BackupId = Annotated[str, AfterValidator(check_backup_id)]
Component = Annotated[str, AfterValidator(check_component)]
RelPath = Annotated[str, AfterValidator(check_relpath)]
LivePath = Annotated[str, AfterValidator(check_abspath)]
Text = Annotated[str, AfterValidator(check_text)]
Time = Annotated[AwareDatetime, PlainSerializer(iso, return_type=str)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


#: The models' validators are built when the first manifest is validated, not at import: a listing
#: whose manifests all hit the manifest cache (snapagent.manifestcache) validates none.
_DEFER = True


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=_DEFER)


class Artifact(_Model):
    """One stored file of the backup: its name in the target, stored size and sha256 (of the
    stored bytes), compression, and size before compression.

    ``encryption``: ``"none"`` or ``"age"``; an encrypted artifact also records ``plain_size`` and
    ``plain_sha256`` of the age plaintext (the compressed stream), checked end to end with the
    identity, while ``size``/``sha256`` (of the ciphertext, what is stored) are checked without
    it. Unencrypted artifacts are written without these fields, as before they existed."""

    name: Component
    size: int = Field(ge=0)
    sha256: Sha256
    compression: Component
    raw_size: int = Field(ge=0)
    encryption: Literal["none", "age"] = "none"
    plain_size: int | None = Field(default=None, ge=0)
    plain_sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _plain_iff_encrypted(self) -> "Artifact":
        if (self.encryption != "none") != (self.plain_sha256 is not None and self.plain_size is not None):
            raise ValueError("an encrypted artifact records plain_size and plain_sha256, an unencrypted one neither")
        return self

    @model_serializer(mode="wrap")
    def _omit_unencrypted(self, handler):
        data = handler(self)
        if data.get("encryption") == "none":
            for k in ("encryption", "plain_size", "plain_sha256"):
                data.pop(k, None)
        return data


class Volume(_Model):
    """One volume of the job as exported: restored into ``DEST/<label>`` from ``artifact``.

    ``kept``: its snapshot was kept as the base of the next incremental export. ``parent``: the
    backup this export is incremental on (restore replays the chain from the full one);
    ``incremental`` says the same in words (a manifest without it: incremental iff it names a
    parent). ``info``: the driver's own facts (snapshot path, dataset guid, COW size …), never
    used as a path.
    """

    volume: Text
    label: Component
    snapshot: Text
    artifact: Component
    format: Component
    kept: bool = False
    parent: BackupId | None = None
    incremental: bool = False
    info: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _incremental_from_parent(cls, data: Any) -> Any:
        if isinstance(data, dict) and "incremental" not in data:
            data = {**data, "incremental": data.get("parent") is not None}
        return data

    @model_validator(mode="after")
    def _parent_iff_incremental(self) -> "Volume":
        if self.incremental != (self.parent is not None):
            raise ValueError("an incremental export names its parent backup, a full one names none")
        return self


class Location(_Model):
    """Where a live file a quiescer named lies in the backup: volume index and path below it."""

    volume: int = Field(ge=0)
    relpath: RelPath


class ExtraRecord(_Model):
    """An extra artifact a quiescer added (e.g. PostgreSQL's archived WAL): restored as tar into
    ``DEST/<restore_dir>``."""

    name: Component
    artifact: Component
    format: Literal["tar"]
    restore_dir: Component


class QuiescerRecord(BaseModel):
    """What one quiescer recorded; ``type`` names the plugin. Besides the fields below it holds the
    quiescer's own facts (read with ``facts()``), which only that quiescer interprets."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=_DEFER)
    type: Component
    locations: dict[LivePath, Location] = Field(default_factory=dict)
    artifacts: list[ExtraRecord] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_no_artifacts(self, handler):
        data = handler(self)
        if not data.get("artifacts"):
            data.pop("artifacts", None)  # as format 1 wrote it: present only when there are some
        return data

    def facts(self) -> dict[str, Any]:
        """Return the whole record as plain JSON data (what the quiescer's restore hooks read);
        ``artifacts`` is always there (maybe empty)."""
        return {"artifacts": [], **self.model_dump(mode="json")}


class FreezeStep(_Model):
    """One step of the freeze window. Times are milliseconds relative to the window's start (the
    moment the first lock was held; negative: before it). ``lock``: a quiescer taking its lock
    (``start_ms`` when it was asked, ``ms`` the wait until ``held_at_ms``; a quiescer that cannot
    tell when its lock took effect — a command hook — counts from when it was asked, and ``ms`` is
    the whole call); ``snapshot``: one command the driver ran (its line; a driver that runs none:
    its whole ``snapshot`` call); ``verify``, ``release``: one quiescer's."""

    phase: Literal["lock", "snapshot", "verify", "release"]
    what: Text
    start_ms: float
    ms: float = Field(ge=0)
    held_at_ms: float | None = None

    @model_serializer(mode="wrap")
    def _omit_held_at(self, handler):
        data = handler(self)
        if data.get("held_at_ms") is None:
            data.pop("held_at_ms", None)
        return data


class Freeze(_Model):
    """How the freeze window split: ``window_ms`` (first lock held to last release, the same figure
    as the manifest's ``freeze_window_ms``) and its steps in the order they ran."""

    window_ms: float = Field(ge=0)
    steps: list[FreezeStep] = Field(default_factory=list)

    def phase_ms(self) -> dict[str, float]:
        """Return {phase: milliseconds spent in it}: lock (the waits), snapshot, verify, release."""
        out = {"lock": 0.0, "snapshot": 0.0, "verify": 0.0, "release": 0.0}
        for s in self.steps:
            out[s.phase] += s.ms
        return out


class Manifest(_Model):
    """One backup. Cross-checked on construction: unique labels, artifact names and restore
    dirs; every artifact named by a volume or quiescer is described; every location's volume
    exists; the id is ``<job>-<time>``."""

    format: Literal[1, 2] = FORMAT
    id: BackupId
    job: Name
    host: Text
    created: Time
    completed: Time
    driver: Component
    export_format: Component
    snapshot_name: Text
    volumes: list[Volume] = Field(min_length=1)
    quiescers: list[QuiescerRecord] = Field(default_factory=list)
    freeze_window_ms: float = Field(ge=0)
    max_freeze_ms: float = Field(ge=0)
    phases_ms: dict[str, float] = Field(default_factory=dict)
    #: How the window split (snapagent 0.x manifests before this field have none).
    freeze: Freeze | None = None
    artifacts: list[Artifact] = Field(min_length=1)
    versions: dict[str, str] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _omit_no_freeze(self, handler):
        data = handler(self)
        if data.get("freeze") is None:
            data.pop("freeze", None)  # a manifest written before the field dumps as it was
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if not self.id.startswith(self.job + "-"):
            raise ValueError(f"id {self.id!r} is not a backup of job {self.job!r}")
        names = [a.name for a in self.artifacts]
        _unique("artifact name", names)
        labels = [v.label for v in self.volumes]
        _unique("volume label", labels)
        dirs = [e.restore_dir for q in self.quiescers for e in q.artifacts]
        _unique("restore_dir", labels + dirs)
        for ref in [v.artifact for v in self.volumes] + [e.artifact for q in self.quiescers for e in q.artifacts]:
            if ref not in names:
                raise ValueError(f"artifact {ref!r} is named but not described in artifacts")
        for q in self.quiescers:
            for live, loc in q.locations.items():
                if loc.volume >= len(self.volumes):
                    raise ValueError(f"location of {live!r} names volume {loc.volume}, which does not exist")
        for v in self.volumes:
            if v.parent is not None and (v.parent == self.id or not v.parent.startswith(self.job + "-")):
                raise ValueError(f"volume {v.volume!r}: parent {v.parent!r} is not an earlier backup of this job")
        return self

    def artifact(self, name: str) -> Artifact:
        """Return the artifact called ``name`` (validation guarantees every named one exists)."""
        return next(a for a in self.artifacts if a.name == name)

    def volume(self, volume: str) -> Volume | None:
        """Return the record of ``volume``, or None when this backup does not hold it."""
        return next((v for v in self.volumes if v.volume == volume), None)

    @property
    def size(self) -> int:
        """Stored bytes of all artifacts."""
        return sum(a.size for a in self.artifacts)


def _unique(what: str, values: list[str]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what} {v!r} appears twice")
        seen.add(v)


#: The canonical form's encoder, built once (``list`` checks thousands of manifests).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical(data: dict[str, Any]) -> bytes:
    return _CANONICAL.encode(data).encode()


def checksum(data: dict[str, Any]) -> str:
    """Return the checksum of a manifest's JSON data (every field but ``checksum``)."""
    body = {k: v for k, v in data.items() if k != "checksum"} if "checksum" in data else data
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def dumps(manifest: Manifest) -> bytes:
    """Return the bytes of ``manifest.json`` for ``manifest`` (format 2, with its checksum)."""
    data = manifest.model_dump(mode="json")
    data["format"] = FORMAT
    data["checksum"] = checksum(data)
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def loads(raw: bytes, expected_id: str | None = None) -> Manifest:
    """Given the bytes of a ``manifest.json`` (of the backup stored as ``expected_id``), return the
    validated Manifest. Raise ManifestDamaged saying why it cannot be trusted."""
    if len(raw) > MAX_BYTES:
        raise ManifestDamaged(f"manifest is {len(raw)} bytes, more than any snapagent writes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestDamaged(f"manifest is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ManifestDamaged("manifest is not a JSON object")
    fmt = data.get("format")
    if fmt not in READABLE_FORMATS:
        raise ManifestDamaged(f"manifest format {fmt!r} is not one this snapagent reads ({READABLE_FORMATS})")
    if fmt >= 2:
        stored = data.pop("checksum", None)
        if stored is None:
            raise ManifestDamaged("manifest has no checksum")
        if stored != checksum(data):
            raise ManifestDamaged("manifest checksum mismatch (bit rot, or edited after it was written)")
    else:
        data = _from_format_1(data)
    try:
        m = Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestDamaged("manifest is invalid: " + "; ".join(_errors(e))) from None
    if expected_id is not None and m.id != expected_id:
        raise ManifestDamaged(f"manifest names backup {m.id!r} but is stored as {expected_id!r}")
    return m


_CORE_VOLUME_KEYS = set(Volume.model_fields) - {"info"}


def _from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 mixed each volume's driver facts into its record: move them into ``info``."""
    data = dict(data)
    vols = data.get("volumes")
    if isinstance(vols, list):
        data["volumes"] = [{**{k: v for k, v in vol.items() if k in _CORE_VOLUME_KEYS},
                            "info": {k: v for k, v in vol.items() if k not in _CORE_VOLUME_KEYS}}
                           if isinstance(vol, dict) else vol for vol in vols]
    return data


def _errors(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}")
    if len(e.errors()) > 5:
        out.append(f"… {len(e.errors()) - 5} more")
    return out
