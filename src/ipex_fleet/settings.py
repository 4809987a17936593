"""Deploy settings from pyinfra host data: a pydantic schema, checked before any host is touched.

Host data comes from Python inventories, group data files and `--data key=value` (always a
string), so words are understood (yes/no, on/off, true/false), numbers may arrive as text, and
a list given as one string is refused rather than read character by character. Every error is
one line that names the host, the key and what to write instead.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ipex_fleet.domain import SYSTEM_PROFILE, Action
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix.flakepush import FlakeError, check_pushable
from ipex_fleet.host.fleetconfig import ACCELERATORS

_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9._@/-]{0,252}$")
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]+$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9@_.:-]+\.(service|socket|target|timer)$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}(:[A-Za-z0-9_.-]+)?$")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("is not yes or no; use true/false, yes/no or on/off")


def flag(name: str, host: str, value: Any) -> bool:
    """A yes/no host data value: booleans, 0/1, and the words true/false, yes/no, on/off."""
    try:
        return _yes_no(value)
    except ValueError as exc:
        raise UserError(f"host {host}: {name}={value!r} {exc}") from None


def _number(value: Any) -> float:
    if isinstance(value, bool):  # True is an int to Python, never a timeout
        raise ValueError("is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("is not a number") from None


def _at_least(minimum: float):
    def check(value: float) -> float:
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return value
    return check


def _matching(pattern: re.Pattern[str], what: str):
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(what)
        return value
    return check


def _command(value: Any) -> str:
    """A command given as words (a string split like a shell would, or a list), quoted once for the host."""
    try:
        words = [str(w) for w in value] if isinstance(value, (list, tuple)) else shlex.split(str(value))
    except ValueError as exc:
        raise ValueError(f"cannot be split into words ({exc})") from None
    if not words or any(not w or "\n" in w or "\0" in w for w in words):
        raise ValueError("is not a command; give its words, like '/run/current-system/sw/bin/ipex-fleet'")
    return shlex.join(words)


def _levels(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):  # `--data health_levels=1,2` arrives as text
        items: Any = value.replace(",", " ").split()
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = [None]
    try:
        levels = tuple(sorted({int(l) for l in items}))
    except (TypeError, ValueError):
        levels = (0,)
    if any(l not in (1, 2, 3) for l in levels):
        raise ValueError("is not a list of health levels; use levels 1, 2 and 3 (or [] for none)")
    return levels


def _units(value: Any) -> tuple[str, ...]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(u, str) and _UNIT_RE.fullmatch(u) for u in items):
        raise ValueError("is not a list of systemd unit names, like ['ollama.service', 'comfyui.service']")
    return tuple(items)


def _mode(value: Any) -> Action:
    try:
        return Action(str(value))
    except ValueError:
        raise ValueError(f"is an unknown mode; use one of {', '.join(a.value for a in Action)}") from None


def _one_of(*choices: str):
    def check(value: Any) -> str:
        if str(value) not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return str(value)
    return check


def Seconds(minimum: float = 1) -> Any:  # noqa: N802 - a type, used as one
    return Annotated[float, BeforeValidator(_number), AfterValidator(_at_least(minimum))]


def Count(minimum: int) -> Any:  # noqa: N802
    return Annotated[float, BeforeValidator(_number), AfterValidator(_at_least(minimum)), AfterValidator(int)]


YesNo = Annotated[bool, BeforeValidator(_yes_no)]
PlainPath = Annotated[str, BeforeValidator(_matching(_PATH_RE, "must be an absolute path of plain characters"))]
ConfigName = Annotated[str, BeforeValidator(_matching(
    _CONFIG_NAME_RE, "is not a plain attribute name; set it to the flake's nixosConfigurations name"))]
def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("is not a single value; give one string")
    return str(value)


Text = Annotated[str, BeforeValidator(_text)]


class DeploySettings(BaseModel):
    """What one host's deploy needs, from host data (documented in inventories/group_data/all.py)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    flake: Text
    nixos_config: ConfigName
    mode: Annotated[Action, BeforeValidator(_mode)] = Action.SWITCH
    profile: PlainPath = Field(SYSTEM_PROFILE, alias="nix_profile")
    min_free_mb: Count(0) = 1024
    keep_flakes: Count(1) = 5
    command_timeout: Seconds() = 60
    build_timeout: Seconds() = 3600
    activation_timeout: Seconds() = 600
    break_lock: YesNo = False
    magic_rollback: YesNo = True
    # Where toplevels are built: on each target, or once on the controller and pushed to a cache.
    build: Annotated[str, BeforeValidator(_one_of("target", "controller"))] = "target"
    cache: Text | None = None
    cache_public_key: Text | None = None
    cache_secret_key: Text | None = None
    cache_push: Text | None = None
    controller_nix_conf_dir: Text | None = None
    confirm_timeout: Seconds() = 30
    # The lease the controller's heartbeat renews while it runs the host's transaction: a dead
    # controller's host returns by itself within lease_grace (plus the revert).
    lease_grace: Seconds(2) = 30
    # lockstep: each step is a pyinfra operation, run on every host before the next (pyinfra's
    # --fail-percent and its prompt stop the fleet between steps); host: the whole transaction is one
    # operation per host, each host at its own pace (faster on a mixed fleet).
    pace: Annotated[str, BeforeValidator(_one_of("lockstep", "host"))] = "lockstep"
    models_timeout: Seconds() = 3600
    models_verify: YesNo = False  # re-hash every declared model file, not only its marker
    # Mode boot: reboot into the new generation, then run the gates (within reboot_timeout).
    reboot: YesNo = False
    reboot_timeout: Seconds(5) = 600
    # Health and benchmark gate (transaction steps 7 and 8). None: the host's fleet config decides.
    ipex_fleet_command: Annotated[str, BeforeValidator(_command)] = "ipex-fleet"
    accelerator: Annotated[str, BeforeValidator(_one_of(*ACCELERATORS))] | None = None
    min_devices: Count(1) | None = None
    smoke_model: Annotated[str, BeforeValidator(_matching(_MODEL_RE, "is not an Ollama model name"))] | None = None
    health_levels: Annotated[tuple[int, ...], BeforeValidator(_levels)] | None = None
    health_timeout: Seconds() = 300
    bench: YesNo = True
    bench_tolerance: Annotated[float, BeforeValidator(_number), AfterValidator(_at_least(0.01)),
                               AfterValidator(lambda v: v if v < 1 else _below_one())] | None = None
    bench_timeout: Seconds() = 300
    # An inconclusive benchmark (neither within tolerance nor beyond it with confidence) fails the
    # deploy (fail, the default: canaries), is a warning that lets it pass (warn), or keeps the host on
    # probation (pause): its intent stays open, its lease set to pause_timeout, until a person decides
    # (`ipex-fleet rollout --resume RUN --approve|--abort`); nobody deciding in time reverts it.
    bench_inconclusive: Annotated[str, BeforeValidator(_one_of("fail", "warn", "pause"))] = "fail"
    pause_timeout: Seconds(10) = 3600
    # A probe `warn` (a check that passed with doubts: a slow host link, a device selector matching
    # nothing) passes the deploy (pass, the default) or keeps the host on probation (pause).
    health_warn: Annotated[str, BeforeValidator(_one_of("pass", "pause"))] = "pass"
    bench_lock: PlainPath | None = None
    # node_exporter's textfile directory: the deploy's probe and `ipex-fleet metrics` write there
    # (the flake's services.ipex-fleet.metrics.directory); None turns it off.
    metrics_dir: PlainPath | None = "/var/lib/prometheus-node-exporter-text"
    bench_threads: Count(1) | None = None
    # Maintenance (deploys/maintenance.py): what it keeps, how long it waits for a deploy's lock.
    keep_generations: Count(1) = 5
    keep_days: Annotated[float, BeforeValidator(_number), AfterValidator(_at_least(0))] = 14
    gc: YesNo = True
    gc_max_freed_mb: Count(1) | None = None
    gc_min_free_mb: Count(1) | None = None  # collect only while the store has less free than this
    store_optimise: YesNo = False
    keep_records: Count(10) = 500  # lines of deploys.jsonl
    journal_max_mb: Count(1) | None = 1024
    journal_max_days: Count(1) | None = None
    maintenance_lock_wait: Seconds(0) = 0  # 0: skip a host whose lock a deploy holds
    maintenance_restart: YesNo = False  # maintain --restart
    maintenance_bench_quick: YesNo = False  # maintain --quick-bench
    rebaseline: YesNo = False  # maintain --rebaseline (healthy hosts only)
    restart_units: Annotated[tuple[str, ...], BeforeValidator(_units)] = ("ollama.service", "comfyui.service")

    @model_validator(mode="after")
    def _consistent(self) -> "DeploySettings":
        if not os.path.isfile(os.path.join(self.flake, "flake.nix")):
            raise ValueError(f"flake {self.flake} has no flake.nix; fix host data flake=PATH")
        try:  # locked, and what it pushes exists: before any host is touched (once per flake and process)
            check_pushable(self.flake)
        except FlakeError as exc:
            raise ValueError(str(exc)) from None
        if self.reboot and self.mode != Action.BOOT:
            raise ValueError("reboot=true goes with mode=boot (switch and test activate without one)")
        if self.build == "controller":
            keys = ("cache", "cache_public_key", "cache_secret_key", "cache_push")
            missing = [k for k in keys if not getattr(self, k)]
            if missing:
                raise ValueError(f"build=controller needs host data {', '.join(missing)} "
                                 "(the cache hosts read, its signing keys, and where the controller pushes)")
            if not os.path.isfile(self.cache_secret_key or ""):
                raise ValueError(f"cache_secret_key {self.cache_secret_key} does not exist; "
                                 "make one with nix-store --generate-binary-cache-key")
        return self


def _below_one() -> float:
    raise ValueError("must be below 1 (0.15 means 15% slower)")


_KEYS = tuple(field.alias or name for name, field in DeploySettings.model_fields.items())


def check_host_name(name: str) -> str:
    if not _HOST_NAME_RE.fullmatch(name):
        raise UserError(f"host {name!r}: the name may hold only letters, digits and . _ - @ /; "
                        "rename it in the inventory (set ssh_hostname for the address)")
    return name


def from_host_data(name: str, data: Any) -> DeploySettings:
    """Validate `data` (pyinfra HostData or a dict) and return the settings; raise UserError."""
    check_host_name(name)
    values = {key: data.get(key) for key in _KEYS if data.get(key) is not None}
    if not values.get("flake"):
        raise UserError(f"host {name}: no flake set; set host data flake=PATH (a directory with flake.nix)")
    values["flake"] = os.path.abspath(str(values["flake"]))
    values.setdefault("nixos_config", name)
    try:
        return DeploySettings.model_validate(values)
    except ValidationError as exc:
        raise UserError(f"host {name}: {_one_line(exc, values)}") from None


def _one_line(exc: ValidationError, values: dict[str, Any]) -> str:
    """The first error, as `key=value reason; ...`: one line a user can act on."""
    error = exc.errors(include_url=False)[0]
    reason = str(error["msg"]).removeprefix("Value error, ").replace("\n", " ")
    if not error["loc"]:
        return reason
    key = str(error["loc"][0])
    key = DeploySettings.model_fields[key].alias or key if key in DeploySettings.model_fields else key
    shown = repr(values.get(key, error.get("input")))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if not reason.startswith(("is ", "must ", "cannot ")):
        reason = f"is wrong: {reason}"
    return f"{key}={shown} {reason}; fix it in host or group data"
