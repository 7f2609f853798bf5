"""Where desired state comes from. Every source has the same small interface, so the
daemon, `status` and the metrics work the same with each of them:

    src = open_source("/etc/secgroup-agent/config.yaml")   # or https://..., etcd://...
    data, revision = src.fetch()      # the current document (a dict) and its revision;
                                      # raises SourceError when unreachable or unreadable
    src.start(on_change)              # background watching; calls on_change() (no args,
                                      # from any thread) whenever fetch() may return news
    src.close()

A source never validates: the daemon validates what fetch() returns and keeps the last
valid state when it is invalid. A source never flushes anything when unreachable.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from agent.errors import AgentError


class SourceError(AgentError):
    """The source could not be read (unreachable, unreadable); the last state stays."""


class Source(Protocol):
    name: str          # shown in status: "file:/etc/...", "https://...", "etcd://..."

    def fetch(self) -> tuple[Any, str]: ...

    def start(self, on_change: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


def open_source(spec: str, **options: Any) -> Source:
    """A source from a path or URL (file path, https://, http://, etcd://)."""
    if spec.startswith(("http://", "https://")):
        from agent.sources.http import HttpSource
        return HttpSource(spec, **options)
    if spec.startswith("etcd://"):
        from agent.sources.etcd import EtcdSource
        return EtcdSource(spec, **options)
    from agent.sources.file import FileSource
    return FileSource(spec.removeprefix("file://"))
