"""The record writers: packet log lines (NFLOG) and flow records (conntrack events), each
a JSON object a line, to the journal (syslog identifier `secgroup-agent-log`), a
size-bounded file, and/or a callback (the `logs` command prints). Started by `logs`
(a process of its own) or by `run --records` (threads of the daemon).

    rec = Recorder(RecordOptions(host="hv1"), state=lambda: daemon_state)
    rec.start() ... rec.stats.snapshot() ... rec.close()

Threads: `nflog` reads the group and queues packets (bounded: `queue_size`; a full queue
counts `queue_full` and drops the packet), `records` resolves and writes them, `flows`
reads conntrack events (and dumps every `flow_update_every` s for long connections).
Losses are counted (`Stats`) and, every `report_every` s when any grew, written as a
`{"type": "loss", ...}` record and logged.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from agent.compiler.attribution import NFLOG_GROUP
from agent.errors import KernelError
from agent.kernel import ctevents, nflog, verdicts
from agent.reconciler.revoke import RECENTLY_REVOKED
from agent.service.observe import Resolver, StateFn, flow_record, iso_time, log_record

log = logging.getLogger(__name__)
SYSLOG_IDENT = "secgroup-agent-log"


@dataclass(frozen=True)
class RecordOptions:
    host: str
    group: int = NFLOG_GROUP
    packets: bool = True
    flows: bool = False
    log_file: Optional[str] = None
    max_bytes: int = 64 << 20          # the file is rotated at this size
    backups: int = 4                    # rotated files kept (.1 .. .N): at most (N+1) x max_bytes
    syslog: bool = False
    queue_size: int = 10000
    report_every: float = 60.0
    flow_update_every: float = 300.0
    reap_every: float = 5.0             # ended connections reported (ctevents.reap_expired)
    max_connections: int = 65536        # connections whose first sight is remembered
    enable_accounting: bool = True


class Stats:
    KEYS = ("packets_logged", "rate_limited", "kernel_overruns", "kernel_gaps", "queue_full", "flow_records",
            "flow_overruns", "flow_untracked", "write_errors")
    LOSSES = ("kernel_overruns", "kernel_gaps", "queue_full", "flow_overruns", "flow_untracked", "write_errors")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.KEYS, 0)

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._values[key] += n

    def set(self, key: str, value: int) -> None:
        with self._lock:
            self._values[key] = value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def lost(self) -> int:
        v = self.snapshot()
        return sum(v[k] for k in self.LOSSES)


def _journal() -> logging.Handler:
    """The journal through syslog (identifier SYSLOG_IDENT); stdout where there is no
    /dev/log (a container without syslog: the service manager still collects stdout)."""
    try:
        handler: logging.Handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.ident = f"{SYSLOG_IDENT}: "         # type: ignore[attr-defined]
    except OSError as exc:
        log.warning("records: no syslog socket (%s); writing them to stdout", exc)
        handler = logging.StreamHandler(sys.stdout)
    return handler


class Sink:
    """Where records go: the journal, a rotated file, a callback."""

    def __init__(self, options: RecordOptions, echo: Optional[Callable[[dict], None]] = None) -> None:
        self.echo = echo
        self._logger = logging.getLogger(f"{__name__}.records.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handlers: list[logging.Handler] = []
        if options.log_file:
            self._handlers.append(logging.handlers.RotatingFileHandler(
                options.log_file, maxBytes=options.max_bytes, backupCount=options.backups))
        if options.syslog:
            self._handlers.append(_journal())
        for h in self._handlers:
            self._logger.addHandler(h)

    def write(self, record: dict) -> None:
        if self._handlers:
            self._logger.info(json.dumps(record, separators=(",", ":")))
        if self.echo is not None:
            self.echo(record)

    def close(self) -> None:
        for h in self._handlers:
            self._logger.removeHandler(h)
            h.close()


class Recorder:
    def __init__(self, options: RecordOptions, state: StateFn = lambda: None,
                 echo: Optional[Callable[[dict], None]] = None,
                 resolver: Optional[Resolver] = None) -> None:
        self.options = options
        self.resolver = resolver or Resolver(verdicts.read_verdict_chains, state)
        self.sink = Sink(options, echo)
        self.stats = Stats()
        self._queue: "queue.Queue[Any]" = queue.Queue(options.queue_size)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reader: Optional[nflog.NflogReader] = None
        self._events: Optional[ctevents.CtEvents] = None
        self._reported: dict[str, int] = {}
        self._first_seen: dict[int, float] = {}
        self._baseline: dict[int, int] = {}           # verdict chain packets when reading began
        self._logged: dict[int, int] = {}             # lines written per identity number

    def start(self) -> "Recorder":
        """Bind what is asked (errors raise KernelError before any thread starts)."""
        if self.options.packets:
            self._reader = nflog.NflogReader(self.options.group)
            self._baseline = {n: c.packets for n, c in self._chains().items()}
        if self.options.flows:
            if self.options.enable_accounting:
                for name in ctevents.enable_accounting():
                    log.warning("flow records: cannot set net.netfilter.%s=1: counters/times missing", name)
            try:
                self._events = ctevents.CtEvents()
            except OSError as exc:
                raise KernelError(f"conntrack events: {exc}") from exc
        for name, target, wanted in (("nflog", self._read_packets, self._reader), ("records", self._write_packets, self._reader),
                                     ("flows", self._read_flows, self._events), ("records-loss", self._report_loop, True)):
            if wanted:
                t = threading.Thread(target=self._guard(target), name=name, daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:        # a reader must not take the daemon down: logged, counted
                log.exception("records: %s stopped", threading.current_thread().name)
        return run

    # -- packets --------------------------------------------------------------------
    def _read_packets(self) -> None:
        assert self._reader is not None
        while not self._stop.is_set():
            for p in self._reader.read(0.5):
                try:
                    self._queue.put_nowait(p)
                except queue.Full:
                    self.stats.add("queue_full")
            self.stats.set("kernel_overruns", self._reader.overruns)
            self.stats.set("kernel_gaps", self._reader.gaps)

    def _write_packets(self) -> None:
        while not self._stop.is_set():
            try:
                p = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            record = log_record(p, self.resolver, self.options.host, verdicts.interface_name)
            number = record["number"] or 0
            self._logged[number] = self._logged.get(number, 0) + 1
            self._emit(record, "packets_logged")

    def _chains(self) -> dict[int, verdicts.VerdictChain]:
        try:
            return self.resolver.refresh()
        except KernelError as exc:
            log.warning("records: cannot list the verdict chains: %s", exc)
            return {}

    def rate_limited(self) -> dict[int, int]:
        """Per identity number with a log statement: packets that passed its verdict chain
        since reading began and were not logged (the kernel's rate limit held them back,
        or their message was lost); the chains are listed now."""
        out = {}
        for n, c in self._chains().items():
            if c.logs and n in self._baseline:
                missed = c.packets - self._baseline[n] - self._logged.get(n, 0)
                if missed > 0:
                    out[n] = missed
        self.stats.set("rate_limited", sum(out.values()))
        return out

    def _emit(self, record: dict, counter: str) -> None:
        try:
            self.sink.write(record)
            self.stats.add(counter)
        except (OSError, ValueError):
            self.stats.add("write_errors")

    # -- flows ----------------------------------------------------------------------
    def _read_flows(self) -> None:
        assert self._events is not None
        next_dump = time.monotonic() + self.options.flow_update_every
        next_reap = time.monotonic() + self.options.reap_every
        while not self._stop.is_set():
            for e in self._events.read(0.5):
                self.handle_flow_event(e)
            self.stats.set("flow_overruns", self._events.overruns)
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + self.options.reap_every
                self._reap()
            if time.monotonic() >= next_dump:
                next_dump = time.monotonic() + self.options.flow_update_every
                self.long_flows(ctevents.dump_entries(), time.time())

    def _reap(self) -> None:
        try:
            ctevents.reap_expired()
        except OSError as exc:
            log.warning("records: reaping ended connections failed: %s", exc)

    def handle_flow_event(self, e: ctevents.CtEvent) -> None:
        if e.kind == "new":
            if len(self._first_seen) >= self.options.max_connections:
                self.stats.add("flow_untracked")      # its record will lack a start unless timestamps are on
            else:
                self._first_seen[e.id] = time.time()
            return
        if e.kind == "destroy":
            record = flow_record(e, self.resolver, self.options.host, RECENTLY_REVOKED, self._first_seen.pop(e.id, None))
            if record is not None:
                self._emit(record, "flow_records")

    def long_flows(self, entries: list[ctevents.CtEvent], now: float) -> None:
        """An "update" record for each connection older than `flow_update_every`."""
        for e in entries:
            start = e.start if e.start is not None else self._first_seen.get(e.id)
            if start is not None and now - start >= self.options.flow_update_every:
                record = flow_record(e, self.resolver, self.options.host, RECENTLY_REVOKED, start)
                if record is not None:
                    self._emit(record, "flow_records")

    # -- loss reports ---------------------------------------------------------------
    def _report_loop(self) -> None:
        while not self._stop.wait(self.options.report_every):
            self.report_loss()

    def report_loss(self) -> Optional[dict]:
        """A loss record when a loss counter grew since the last one (None: none grew)."""
        limited = self.rate_limited() if self._reader is not None else {}
        now = self.stats.snapshot()
        grown = {k: now[k] - self._reported.get(k, 0) for k in Stats.LOSSES + ("rate_limited",)
                 if now[k] > self._reported.get(k, 0)}
        if not grown:
            return None
        self._reported = now
        record = {"type": "loss", "time": iso_time(time.time()), "host": self.options.host, "since_last": grown,
                  "totals": now, "rate_limited_by_identity": self._named(limited)}
        log.warning("records not written (lost or held back by a rate limit): %s", ", ".join(f"{k} +{v}" for k, v in sorted(grown.items())))
        try:
            self.sink.write(record)
        except (OSError, ValueError):
            self.stats.add("write_errors")
        return record

    def collector(self) -> "StatsCollector":
        return StatsCollector(self.stats)

    def _named(self, counts: dict[int, int]) -> dict[str, int]:
        return {(c.key if (c := self.resolver.chains.get(n)) is not None and c.key else str(n)): v
                for n, v in sorted(counts.items())}

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        for thing in (self._reader, self._events):
            if thing is not None:
                thing.close()
        self.report_loss()
        self.sink.close()


class StatsCollector:
    """Prometheus: secgroup_agent_records_<key>_total, one counter per Stats key."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily
        for key, value in self.stats.snapshot().items():
            yield CounterMetricFamily(f"secgroup_agent_records_{key}", f"Records: {key.replace('_', ' ')}", value=value)
