"""The status document: what the daemon produces (agent.service.status.build_status) and
what `status`, `wait`, the metrics endpoint and the socket's clients read. One typed
form; `to_dict` is its JSON shape (`status --json`), `from_dict` reads it back."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class LastApply:
    time: float
    duration_ms: float
    kernel_ms: float
    mode: str
    result: str
    revision: str


@dataclass(frozen=True)
class Interfaces:
    configured: int = 0
    present: int = 0
    missing: tuple[str, ...] = ()
    programmed: dict[str, str] = field(default_factory=dict)   # name -> revision its rules enforce


@dataclass(frozen=True)
class RulesetFacts:
    tables: int = 0
    chains: int = 0
    rules: int = 0
    sets: int = 0
    elements: int = 0


@dataclass(frozen=True)
class Status:
    pid: int
    source: str
    ready: bool
    host: Optional[str] = None
    started: float = 0.0
    revision: Optional[str] = None
    state_hash: Optional[str] = None
    last_apply: Optional[LastApply] = None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    interfaces: Interfaces = field(default_factory=Interfaces)
    ruleset: Optional[RulesetFacts] = None
    applies: dict[str, int] = field(default_factory=dict)
    drift_repairs: int = 0
    conntrack_deleted: int = 0
    started_as: str = ""              # how the kernel was found at start: adopted, replaced, ...
    audit: tuple[str, ...] = ()       # group/rule of the drop rules in audit mode (they accept)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("errors", "warnings", "audit"):
            doc[key] = list(doc[key])
        doc["interfaces"]["missing"] = list(doc["interfaces"]["missing"])
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Status":
        last, nics, rs = doc.get("last_apply"), doc.get("interfaces") or {}, doc.get("ruleset")
        return cls(
            pid=int(doc.get("pid", 0)), source=str(doc.get("source")), ready=bool(doc.get("ready")),
            host=doc.get("host"), started=float(doc.get("started") or 0), revision=doc.get("revision"),
            state_hash=doc.get("state_hash"), last_apply=LastApply(**last) if last else None,
            errors=tuple(doc.get("errors") or ()), warnings=tuple(doc.get("warnings") or ()),
            interfaces=Interfaces(nics.get("configured", 0), nics.get("present", 0),
                                  tuple(nics.get("missing") or ()), dict(nics.get("programmed") or {})),
            ruleset=RulesetFacts(**rs) if rs else None, applies=dict(doc.get("applies") or {}),
            drift_repairs=int(doc.get("drift_repairs", 0)), conntrack_deleted=int(doc.get("conntrack_deleted", 0)),
            started_as=str(doc.get("started_as", "")), audit=tuple(doc.get("audit") or ()))
