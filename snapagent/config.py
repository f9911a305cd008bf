"""Configuration: TOML validated by pydantic; every error names the key path and exits 2.

Structure is validated here; the ``options`` of a job, each ``quiesce`` entry and each target are
validated by the model their plugin declares (``Options`` / ``Config`` class attributes), so plugins
get the same strictness as built-ins.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from snapagent import registry
from snapagent.errors import ConfigError
from snapagent.retention.span import Span, parse_span
from snapagent.schedule import calendar
from snapagent.util.durations import parse_config_duration, parse_duration
from snapagent.util.names import NAME_RE
from snapagent.util.secretfiles import config_stat_problem

DEFAULT_CONFIG = "/etc/snapagent/snapagent.toml"

Duration = Annotated[float, BeforeValidator(parse_config_duration)]
#: The longest max_freeze accepted: writers wait for the whole window (an FTWRL, BACKUP STAGE or
#: SQLite lock blocks every commit), so a longer one is an outage, never meant (a unit mistake: "7d").
MAX_FREEZE_CEILING = 600.0
Within = Annotated[Span, BeforeValidator(parse_span)]


def _full_every(value: object) -> int | float:
    """``full_every``: a TOML integer is a count of incrementals, a string an age (seconds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as e:
            raise ValueError(f"{e}; or a count of incrementals, e.g. 7") from None
    raise ValueError(f"{value!r} is neither a count of incrementals (7) nor an age (\"7d\")")


FullEvery = Annotated[int | float, BeforeValidator(_full_every)]


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def absolute(v: Path | None) -> Path | None:
    """A path in the config: absolute (a relative one would depend on the directory cron or
    systemd happens to start in). Raise ValueError."""
    if v is not None and not v.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(v)!r}")
    return v


class AgentConfig(Strict):
    state_dir: Path = Path("/var/lib/snapagent")
    scratch_dir: Path | None = None  # where `drill` restores; default <state_dir>/drill
    tools: dict[str, str] = Field(default_factory=dict)  # tool name -> path, e.g. btrfs = "/usr/bin/btrfs"
    metrics_file: Path | None = None  # Prometheus textfile collector file, written after every run

    _absolute = field_validator("state_dir", "scratch_dir")(absolute)

    @field_validator("metrics_file")
    @classmethod
    def _metrics_file(cls, v: Path | None) -> Path | None:
        if v is not None and (not v.is_absolute() or v.suffix != ".prom"):
            raise ValueError("must be an absolute path ending in .prom (node_exporter's textfile collector "
                             "reads only *.prom files)")
        return v


class RetentionConfig(Strict):
    """``[jobs.X.retention]``: restic's ``forget --keep-*`` rules (-1 = unlimited, 0 = no rule);
    ``keep_within`` in restic's syntax (``2d``, ``1y6m``: m is months), see ``snapagent.retention``."""

    keep_last: int | None = Field(default=None, ge=-1)
    keep_hourly: int | None = Field(default=None, ge=-1)
    keep_daily: int | None = Field(default=None, ge=-1)
    keep_weekly: int | None = Field(default=None, ge=-1)
    keep_monthly: int | None = Field(default=None, ge=-1)
    keep_yearly: int | None = Field(default=None, ge=-1)
    keep_within: Within | None = None


class TargetEntry(BaseModel):
    """A target before its plugin validates it: only ``type`` is known here."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str


class QuiesceEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    type: str


class JobConfig(Strict):
    driver: str
    volumes: list[str] = Field(min_length=1)
    target: str
    export: str | None = None  # driver's default when unset
    max_freeze: Duration = 10.0
    max_lock_wait: Duration | None = None  # how long taking the first lock may take; default max_freeze
    options: dict[str, Any] = Field(default_factory=dict)
    quiesce: list[QuiesceEntry] = Field(default_factory=list)
    # unattended operation (design note, "Contract, second part")
    schedule: str | None = None  # systemd OnCalendar expression
    mode: Literal["full", "incremental"] = "full"
    full_every: FullEvery | None = None  # incremental: a full after N incrementals (int), or an age (str)
    retention: RetentionConfig | None = None
    copy_to: list[str] = Field(default_factory=list)  # targets that get a verified copy after the commit
    ping_url: str | None = None  # healthchecks.io style: /start, success, /fail
    ping_timeout: Duration = 10.0  # bound of each ping, in total; a slow ping is a warning
    check_max_age: Duration | None = None

    @field_validator("ping_url")
    @classmethod
    def _ping_url(cls, v: str | None) -> str | None:
        # never echo the value: a healthchecks URL is a secret of sorts
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
                raise ValueError("must be an http:// or https:// URL with a host (e.g. https://hc-ping.com/<uuid>)")
        return v

    @field_validator("max_freeze")
    @classmethod
    def _max_freeze(cls, v: float) -> float:
        if v > MAX_FREEZE_CEILING:
            raise ValueError(f"{v:g}s is longer than the ceiling of {MAX_FREEZE_CEILING:g}s: writers wait for the "
                             "whole freeze window, so a longer one is an outage, not a backup (seconds are meant: "
                             "\"10s\", VSS's figure)")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v is not None:
            calendar.validate(v)  # ValueError → "jobs.X.schedule: <why>", exit 2
        return v

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        for vol in v:
            if not vol or "\x00" in vol or "\n" in vol:
                raise ValueError(f"invalid volume name {vol!r} (empty, NUL or newline)")
        if len(set(v)) != len(v):
            raise ValueError("a volume is listed twice")
        return v


class RawConfig(Strict):
    agent: AgentConfig = Field(default_factory=AgentConfig)
    targets: dict[str, TargetEntry]
    jobs: dict[str, JobConfig]


class Job:
    """A validated job: its config plus the plugin classes and validated plugin configs."""

    def __init__(self, name: str, cfg: JobConfig, driver_cls: type, options: Any, quiescers: list[tuple[type, Any]], target_name: str):
        self.name = name
        self.cfg = cfg
        self.driver_cls = driver_cls
        self.options = options
        self.quiescers = quiescers
        self.target_name = target_name
        self.export = cfg.export or driver_cls.export_formats[0]


class Config:
    """The whole validated configuration."""

    def __init__(self, path: Path, raw: RawConfig, targets: dict[str, tuple[type, Any]], jobs: dict[str, Job]):
        self.path = path
        self.raw = raw
        self.agent = raw.agent
        self.targets = targets
        self.jobs = jobs
        self.identities = None  # --identity (snapagent.util.age.Identities): runtime, never in the file

    def job(self, name: str) -> Job:
        """Return job ``name``; raise ConfigError listing the defined jobs when unknown."""
        if name not in self.jobs:
            raise ConfigError(f"unknown job {name!r} (defined in {self.path}: {', '.join(sorted(self.jobs))})")
        return self.jobs[name]

    def target(self, name: str):
        """Return an instance of target ``name`` (told the agent's state dir: where a target keeps
        its locks)."""
        cls, tcfg = self.targets[name]
        target = cls(name, tcfg)
        target.identities = self.identities
        target.state_dir = self.agent.state_dir
        return target

    def all_targets(self):
        """Yield an instance of every configured target."""
        for name in self.targets:
            yield self.target(name)


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _errors(e: ValidationError, prefix: str = "") -> list[str]:
    msgs = []
    for err in e.errors():
        key = _loc(err["loc"])
        key = f"{prefix}.{key}" if prefix and key else (prefix or key or "(top level)")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        msgs.append(f"{key}: {msg}")
    return msgs


def validate_plugin(model: type[BaseModel] | None, data: dict, prefix: str) -> Any:
    """Validate ``data`` with a plugin's pydantic ``model``; raise ConfigError naming ``prefix``-keys."""
    if model is None:
        if data:
            raise ConfigError(f"{prefix}.{next(iter(data))}: unknown key")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_errors(e, prefix))) from None


def parse(data: dict, path: Path) -> Config:
    """Given the TOML document ``data`` read from ``path``, return the validated Config.

    Raises ConfigError (exit 2) whose message names every offending key path.
    """
    problems: list[str] = []
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as e:
        problems.extend(_errors(e))
        raw = _valid_parts(data)  # go on with what is valid, so every problem is reported at once
        if raw is None:
            raise ConfigError(f"{path}: invalid configuration\n  " + "\n  ".join(problems)) from None
    defined = sorted(data["targets"]) if isinstance(data.get("targets"), dict) else []

    def collect(fn):
        try:
            return fn()
        except ConfigError as ce:
            problems.extend(str(ce).splitlines())
            return None

    for kind, names in (("targets", raw.targets), ("jobs", raw.jobs)):
        if not names and isinstance(data.get(kind), dict) and not data[kind]:
            problems.append(f"{kind}: at least one entry is required")
        for n in names:
            if not NAME_RE.match(n):
                problems.append(f"{kind}.{n}: invalid name (letters, digits, '.', '_', '-'; must not start with '-' or '.')")
    def typed(kind: str, entry: BaseModel, key: str) -> tuple[type, Any] | None:
        # a `type = "..."` table: find its plugin, validate the other keys with the plugin's model
        cls = collect(lambda: registry.get(kind, entry.type, f"{key}.type"))
        if cls is None:
            return None
        extra = {k: v for k, v in entry.model_dump().items() if k != "type"}
        pcfg = collect(lambda: validate_plugin(cls.Config, extra, key))
        return None if pcfg is None else (cls, pcfg)

    targets: dict[str, tuple[type, Any]] = {}
    for tname, t in raw.targets.items():
        if (found := typed("target", t, f"targets.{tname}")) is not None:
            targets[tname] = found
    jobs: dict[str, Job] = {}
    for jname, j in raw.jobs.items():
        key = f"jobs.{jname}"
        if j.target not in defined:
            problems.append(f"{key}.target: unknown target {j.target!r} (defined: {', '.join(defined) or 'none'})")
        for i, c in enumerate(j.copy_to):
            if c not in defined:
                problems.append(f"{key}.copy_to[{i}]: unknown target {c!r} (defined: {', '.join(defined) or 'none'})")
            elif c == j.target or j.copy_to.index(c) != i:
                problems.append(f"{key}.copy_to[{i}]: target {c!r} is the job's own target or listed twice")
        dcls = collect(lambda: registry.get("driver", j.driver, f"{key}.driver"))
        options = None
        if dcls is not None:
            options = collect(lambda: validate_plugin(dcls.Options, j.options, f"{key}.options"))
            if j.export is not None and j.export not in dcls.export_formats:
                problems.append(f"{key}.export: driver {j.driver!r} cannot export {j.export!r} (choose: {', '.join(dcls.export_formats)})")
            problems.extend(_mode_problems(key, j, dcls, options))
        indexed = [(i, found) for i, q in enumerate(j.quiesce)
                   if (found := typed("quiescer", q, f"{key}.quiesce[{i}]")) is not None]
        quiescers = [found for _, found in indexed]
        problems.extend(_wait_problems(key, j, indexed))
        if dcls is not None and (options is not None or dcls.Options is None):
            problems.extend(_place_problems(key, j, dcls, options, quiescers))
        if dcls is not None:
            problems.extend(f"{key}.volumes[{i}]: {why}" for i, v in enumerate(j.volumes)
                            if (why := dcls.volume_refusal(v)) is not None)
            jobs[jname] = Job(jname, j, dcls, options, quiescers, j.target)
    if problems:
        raise ConfigError(f"{path}: invalid configuration\n  " + "\n  ".join(problems))
    return Config(path, raw, targets, jobs)


def _valid_parts(data: Any) -> RawConfig | None:
    """Return a RawConfig of the sections of ``data`` that are valid on their own (the agent table,
    each target, each job), or None when ``data`` has no usable shape; the caller has the errors."""
    if not isinstance(data, dict) or not isinstance(data.get("targets", {}), dict) \
            or not isinstance(data.get("jobs", {}), dict):
        return None

    def valid(model: type[BaseModel], value: Any) -> Any:
        # once more without the keys that failed: the others (a job's quiescers) still get checked
        for _ in range(2):
            try:
                return model.model_validate(value)
            except ValidationError as e:
                if not isinstance(value, dict):
                    return None
                value = {k: v for k, v in value.items() if k not in {err["loc"][0] for err in e.errors() if err["loc"]}}
        return None

    targets = {n: t for n, v in data.get("targets", {}).items() if (t := valid(TargetEntry, v)) is not None}
    jobs = {n: j for n, v in data.get("jobs", {}).items() if (j := valid(JobConfig, v)) is not None}
    return RawConfig.model_construct(agent=valid(AgentConfig, data.get("agent", {})) or AgentConfig(),
                                     targets=targets, jobs=jobs)


def _wait_problems(key: str, j: JobConfig, indexed: list[tuple[int, tuple[type, Any]]]) -> list[str]:
    """Return the quiescers' lock waits (``Quiescer.lock_waits``) the engine would cut short: the
    first lock may wait max_lock_wait (default max_freeze), every later one at most max_freeze."""
    out = []
    first = j.max_lock_wait or j.max_freeze
    for n, (i, (cls, qcfg)) in enumerate(indexed):
        bound, name = (first, "max_lock_wait" if j.max_lock_wait else "max_freeze") if n == 0 else \
            (min(first, j.max_freeze), "max_freeze")
        for wkey, seconds in cls.lock_waits(qcfg).items():
            if seconds > bound:
                out.append(f"{key}.quiesce[{i}].{wkey}: {seconds:g}s is longer than the job's {name} ({bound:g}s), "
                           f"which cuts every lock wait short; lower it to {bound:g}s or less, or raise {name}")
    return out


def _mode_problems(key: str, j: JobConfig, dcls: type, options: Any) -> list[str]:
    """Return what is wrong with job ``key``'s ``mode``/``full_every`` for driver ``dcls``."""
    from snapagent.plugin.driver import IncrementalBase

    if j.mode != "incremental":
        return [f"{key}.full_every: only meaningful with mode = \"incremental\" (mode is {j.mode!r})"] \
            if j.full_every is not None else []
    out = []
    if isinstance(j.full_every, int) and j.full_every < 1:  # an age is positive already (parse_duration)
        out.append(f"{key}.full_every: a count of incrementals must be at least 1 (got {j.full_every})")
    fmt = j.export or dcls.export_formats[0]
    if not issubclass(dcls, IncrementalBase):
        out.append(f"{key}.mode: driver {j.driver!r} cannot export incrementally; use mode = \"full\"")
    elif options is not None or dcls.Options is None:
        if why := dcls.incremental_refusal(fmt, options):
            out.append(f"{key}.mode: incremental mode is impossible here: {why}")
    return out


def _place_problems(key: str, j: JobConfig, dcls: type, options: Any, quiescers: list[tuple[type, Any]]) -> list[str]:
    """Return the snapshot places job ``key``'s options put inside its volumes or its databases'
    data directories, as far as the config's own paths tell (the preflight checks the real ones)."""
    from snapagent import places
    from snapagent.plugin.driver import SnapshotPlaces

    if not issubclass(dcls, SnapshotPlaces):
        return []
    roots = [(f"volume {v!r}", Path(v)) for v in j.volumes if v.startswith("/")]
    for i, (qcls, qcfg) in enumerate(quiescers):
        roots += [(f"the data of {key}.quiesce[{i}] ({qcls.type})", d) for d in getattr(qcls, "data_dirs", lambda c: [])(qcfg)]
    return places.refusals(key, dcls.configured_places(options), roots)


def config_path(cli_value: str | None) -> Path:
    """Return the config path: ``-c`` value, else $SNAPAGENT_CONFIG, else the default."""
    return Path(cli_value or os.environ.get("SNAPAGENT_CONFIG") or DEFAULT_CONFIG)


def load(path: Path) -> Config:
    """Read and validate the config file at ``path``; raise ConfigError (exit 2) listing every
    problem: the file's own permissions (its argv lists run as root) and every invalid key."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (use -c FILE or $SNAPAGENT_CONFIG)") from None
    except OSError as e:
        raise ConfigError(f"config file not readable: {path} ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    problems = [why] if (why := config_stat_problem(path, st)) else []
    mode = st.st_mode
    if mode & 0o077 and (key := _secret_key(data)):  # a plugin may take a secret; the file must be private then
        problems.append(f"{key} holds a secret but the file is readable by group/others "
                        f"(mode {mode & 0o777:04o}); chmod 600 {path} — or better, keep secrets in their own 0600 "
                        "files (pgpass, MySQL option files)")
    try:
        cfg = parse(data, path)
    except ConfigError as e:
        raise ConfigError("\n  ".join([str(e), *problems])) from None
    if problems:
        raise ConfigError(f"{path}: invalid configuration\n  " + "\n  ".join(problems))
    return cfg


_SECRET = re.compile(r"(pass(word|wd|phrase)?|secret|token|private_?key|api_?key)$", re.I)


def _secret_key(data: Any, prefix: str = "") -> str | None:
    """Return the key path of the first non-empty value whose key names a secret, or None."""
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if _SECRET.search(str(k)) and isinstance(v, str) and v:
                return key
            if (found := _secret_key(v, key)) is not None:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            if (found := _secret_key(v, f"{prefix}[{i}]")) is not None:
                return found
    return None
