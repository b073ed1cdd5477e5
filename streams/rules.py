"""Admission rules as data, and the one pure function that decides whether a key is admitted.

The rules come from a small JSON file (``HEATCACHE_HEAT_RULES``) on top of the heat settings,
validated at start-up (:func:`load_rules`). :func:`decide` is the only place a HotUrl is
decided; the Faust app and replay both call it, with event time passed in.

File format (every field optional)::

    {
      "default": {"min_clients": 2, "min_requests": 1, "min_bytes": 0, "window_s": 86400},
      "hosts": {"*.debian.org": {"min_clients": 1}, "downloads.example.org": {"window_s": 3600}},
      "paths": [{"pattern": "*.iso", "min_clients": 1}, {"pattern": "/api/*", "deny": true}],
      "allow_hosts": ["*.ubuntu.com"],   # when non-empty, only these hosts are ever admitted
      "deny_hosts": ["ads.example.com"], # never admitted (wins over allow and overrides)
      "first_access": false              # admit on the first request of every key (see tuning)
    }

Host patterns: ``name`` matches the name and its subdomains, ``*.name`` only subdomains.
Path patterns are shell globs (``fnmatch``) on the key's path and query. An override's fields
replace the default's; a matching path pattern wins over a matching host.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.windows import Heat, WindowSpec, WindowStats

# -- the file's schema (pydantic: strict, unknown fields refused) -------------------------------


class _Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_clients: int | None = Field(default=None, ge=1)
    min_requests: int | None = Field(default=None, ge=1)
    min_bytes: int | None = Field(default=None, ge=0)
    window_s: int | None = Field(default=None, ge=1)
    first_access: bool | None = None
    deny: bool | None = None


class _PathRule(_Thresholds):
    pattern: str = Field(min_length=1)


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    default: _Thresholds = _Thresholds()
    hosts: dict[str, _Thresholds] = {}
    paths: list[_PathRule] = []
    allow_hosts: list[str] = []
    deny_hosts: list[str] = []
    first_access: bool = False


class RulesError(ValueError):
    """The rules file or the heat settings are invalid; the message says where."""


# -- resolved rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """The thresholds that apply to one key, after overrides."""

    window_s: int
    min_clients: int = 2
    min_requests: int = 1
    min_bytes: int = 0
    first_access: bool = False
    deny: bool = False
    source: str = "default"  # which part of the rules gave it (for logs and replay reports)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Re-emission of a key whose fetch failed: base * 2^(failures-1), at most max_s."""

    base_s: float = 60.0
    max_s: float = 6 * 3600.0
    # an admitted key with no cache event this long after its admission (event time) may be
    # admitted again: the HotUrl or the fetcher's answer was lost (0 = wait for ever)
    unanswered_s: float = 0.0

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.base_s * 2 ** max(0, failures - 1))


def _host_matcher(pattern: str) -> re.Pattern[str]:
    p = pattern.lower().rstrip(".")
    if p.startswith("*."):
        return re.compile(r"(?:.+\.)" + re.escape(p[2:]) + r"\Z")
    return re.compile(r"(?:.+\.)?" + re.escape(p) + r"\Z")


@dataclass(frozen=True)
class Rules:
    """Every admission rule, compiled. Build with :func:`load_rules` or :meth:`simple`."""

    spec: WindowSpec
    default: Rule
    hosts: tuple[tuple[re.Pattern[str], _Thresholds, str], ...] = ()
    paths: tuple[tuple[re.Pattern[str], _Thresholds, str], ...] = ()
    allow_hosts: tuple[re.Pattern[str], ...] = ()
    deny_hosts: tuple[re.Pattern[str], ...] = ()
    backoff: Backoff = Backoff()
    _memo: dict[tuple[str, str], Rule] = field(default_factory=dict, compare=False, repr=False)
    _key_memo: dict[str, Rule] = field(default_factory=dict, compare=False, repr=False)
    _plain: bool = field(default=False, init=False, compare=False, repr=False)

    @classmethod
    def simple(cls, spec: WindowSpec, min_clients: int = 2, min_requests: int = 1, first_access: bool = False,
               backoff: Backoff | None = None) -> Rules:
        """One rule for every key (the settings alone, no file)."""
        return cls(spec, Rule(spec.window_s, min_clients, min_requests, first_access=first_access),
                   backoff=backoff or Backoff())

    def __post_init__(self) -> None:
        # no override, allow or deny list: every key gets the default (no need to split keys)
        object.__setattr__(self, "_plain", not (self.hosts or self.paths or self.allow_hosts or self.deny_hosts))

    @property
    def plain(self) -> bool:
        """One rule for every key: no override, allow or deny list."""
        return self._plain

    def rule_for_key(self, cache_key: str) -> Rule:
        """The rule of one cache key (memoized per key: the hot path asks once per message)."""
        if self._plain:
            return self.default
        rule = self._key_memo.get(cache_key)
        if rule is None:
            if len(self._key_memo) > 200_000:
                self._key_memo.clear()
            rule = self._key_memo[cache_key] = self.rule_for(*split_key(cache_key))
        return rule

    def rule_for(self, host: str, path: str) -> Rule:
        """The rule of one key (memoized: the same key always gets the same rule)."""
        memo = self._memo.get((host, path))
        if memo is not None:
            return memo
        rule = self.default
        deny = any(m.match(host) for m in self.deny_hosts) or (
            bool(self.allow_hosts) and not any(m.match(host) for m in self.allow_hosts))
        for matcher, over, name in self.hosts:
            if matcher.match(host):
                rule = _apply(rule, over, name)
                break
        for matcher, over, name in self.paths:
            if matcher.match(path):
                rule = _apply(rule, over, name)
                break
        if deny:
            rule = replace(rule, deny=True, source="deny_hosts" if self.deny_hosts else "allow_hosts")
        if len(self._memo) > 100_000:  # bounded: keys come and go
            self._memo.clear()
        self._memo[(host, path)] = rule
        return rule


def _apply(rule: Rule, over: _Thresholds, name: str) -> Rule:
    values = {k: v for k, v in over.model_dump().items() if v is not None and k != "pattern"}
    return replace(rule, **values, source=name)


def load_rules(path: Path | None, spec: WindowSpec, min_clients: int = 2, min_requests: int = 1,
               first_access: bool = False, backoff: Backoff | None = None) -> Rules:
    """Read and validate the rules file (None: settings only). Raise RulesError on anything wrong,
    including a rule window longer than the heat window (the state would not hold it)."""
    base = Rules.simple(spec, min_clients, min_requests, first_access, backoff)
    if path is None:
        return base
    try:
        parsed = _RulesFile.model_validate(orjson.loads(Path(path).read_bytes()))
    except OSError as exc:
        raise RulesError(f"cannot read heat rules {path}: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise RulesError(f"heat rules {path} is not JSON: {exc}") from None
    except ValidationError as exc:
        raise RulesError(f"invalid heat rules {path}:\n{exc}") from None
    default = _apply(base.default, parsed.default, "default")
    if parsed.first_access:
        default = replace(default, first_access=True)
    hosts = tuple((_host_matcher(p), t, f"hosts[{p}]") for p, t in parsed.hosts.items())
    paths = tuple((re.compile(fnmatch.translate(r.pattern)), r, f"paths[{r.pattern}]") for r in parsed.paths)
    rules = Rules(spec, default, hosts, paths, tuple(_host_matcher(h) for h in parsed.allow_hosts),
                  tuple(_host_matcher(h) for h in parsed.deny_hosts), base.backoff)
    for _m, over, name in (*hosts, *paths):
        window = over.window_s or default.window_s
        if window > spec.window_s or window % spec.step_s:
            raise RulesError(f"heat rules {path}: {name} window_s={window} must be a multiple of the step "
                             f"({spec.step_s} s) and at most the heat window ({spec.window_s} s)")
    if default.window_s > spec.window_s or default.window_s % spec.step_s:
        raise RulesError(f"heat rules {path}: default window_s={default.window_s} must be a multiple of the "
                         f"step ({spec.step_s} s) and at most the heat window ({spec.window_s} s)")
    return rules


def split_key(cache_key: str) -> tuple[str, str]:
    """(host, path+query) of a cache key, the two things rules match on (the key is normalized
    already: lower-case host, no credentials, no fragment)."""
    rest = cache_key.partition("://")[2]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if authority.startswith("["):
        host = authority[: authority.find("]") + 1]
    else:
        host = authority.partition(":")[0]
    if not path.startswith("/"):
        path = "/" + path
    return host, path


# -- what streams knows of the cache -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheView:
    """What streams knows of a key in the cache: its last cache event ("" = none) and whether
    streams admitted it and has seen no cache event since (it is being fetched).

    ``ts`` is when the last event was seen, on the event-time axis of the windows (the shell
    records the watermark at which it read the cache event), so back-off runs on event time."""

    state: str = ""
    ts: float = 0.0
    failures: int = 0  # consecutive failed fetches seen
    fetching: bool = False


class Decision(NamedTuple):
    admit: bool
    reason: str  # "heat", "first-access", "refetch-evicted", "retry-failed" or why not ("fetching", ...)
    stats: WindowStats | None = None  # what the rule was checked against (None when not computed)


_NO_STATE = Decision(False, "no-state")


def decide(rules: Rules, cache_key: str, heat: Heat | None, cache: CacheView, watermark: float,
           pin: str = "") -> Decision:
    """Admit ``cache_key`` now? Pure: ``watermark`` is the event time the window ends at.

    - an operator's pin (the `control` topic) first: "never" -> never, "always" -> on first access;
    - deny (deny_hosts, not on allow_hosts, or a deny override) -> never;
    - cached or stale (the fetcher revalidates), or being fetched -> not again;
    - failed -> again once the back-off after the failure has passed (on event time), if still hot;
    - evicted, purged or never seen -> when the rule's window holds enough requests, distinct
      clients and bytes (or any request, when the rule is first-access).
    """
    if heat is None:
        return _NO_STATE
    rule = rules.rule_for_key(cache_key)
    if pin == "never":
        return Decision(False, "pinned-never")
    if pin == "always":
        rule = replace(rule, deny=False, first_access=True, source="pinned-always")
    if rule.deny:
        return Decision(False, "deny")
    state = cache.state
    if state in ("cached", "stale"):
        return Decision(False, state)
    if cache.fetching:
        return Decision(False, "fetching")
    reason = "first-access" if rule.first_access else "heat"
    if state == "failed":
        if watermark < cache.ts + rules.backoff.delay(cache.failures):
            return Decision(False, "backoff")
        reason = "retry-failed"
    elif state in ("evicted", "purged"):
        reason = "refetch-" + state
    stats = heat.stats(rules.spec.first_pane(watermark, rule.window_s), rule.window_s)
    if rule.first_access:
        return Decision(stats.requests >= 1, reason, stats)
    ok = stats.clients >= rule.min_clients and stats.requests >= rule.min_requests and stats.bytes >= rule.min_bytes
    return Decision(ok, reason if ok else "below-rule", stats)


# -- from the settings -------------------------------------------------------------------------


def auto_step(window_s: int) -> int:
    """About 1/24 of the window, dividing it exactly (24 h -> 1 h panes, 100 s -> 5 s)."""
    for n in (24, 20, 12, 10, 6, 5, 4, 3, 2):
        if window_s % n == 0:
            return window_s // n
    return window_s


def rules_from_settings(settings: Any) -> Rules:
    """The rules the stage runs with: the heat settings plus the rules file, validated now so a
    bad value stops the stage at start-up with the variable's name."""
    step = settings.heat_step_s or auto_step(settings.heat_window_s)
    try:
        spec = WindowSpec(window_s=settings.heat_window_s, step_s=step, grace_s=settings.heat_grace_s,
                          expiry_s=settings.heat_expiry_s, client_cap=settings.heat_max_tracked_clients,
                          sketch_p=settings.heat_sketch_p, max_ahead_s=settings.heat_max_ahead_s)
    except ValueError as exc:
        raise RulesError(f"HEATCACHE_HEAT_WINDOW_S / _STEP_S / _GRACE_S / _EXPIRY_S: {exc}") from None
    if settings.heat_retry_max_s < settings.heat_retry_base_s:
        raise RulesError("HEATCACHE_HEAT_RETRY_MAX_S must be at least HEATCACHE_HEAT_RETRY_BASE_S")
    return load_rules(settings.heat_rules, spec, settings.heat_min_clients, settings.heat_min_requests,
                      settings.heat_first_access, Backoff(settings.heat_retry_base_s, settings.heat_retry_max_s,
                                                          settings.heat_fetch_timeout_s))
