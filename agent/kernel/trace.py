"""nftables tracing for `secgroup-agent trace`: a table of its own that marks matching
packets for tracing, and the trace events read from `nft monitor trace`.

    with TraceSession(arm_script("tap1", "tcp dport 22")) as session:
        for line in session.lines(deadline): ...
    # the trace tables are deleted on leaving, also on an error or Ctrl-C

The tables (`TRACE_TABLES`, `inet` and `bridge` `secgroup_agent_trace`) exist only while
a trace runs; they are not the agent's datapath (agent.reconciler.port OWNED_TABLES does
not list them), so the drift monitor and the deep verify never see them. Their chains
hook prerouting (and output) at priority -350, before the agent's tables (-300 and up),
and only set `meta nftrace set 1`: they accept everything, as if absent.

Why a child `nft monitor trace` and not the NFNLGRP_NFTRACE group directly: a trace
event names the rule by handle and carries its expressions only as netlink; nft
prints the rule's text (with the `comment` holding the verdict identity) from its
cache of the ruleset, which a parser here would have to rebuild. The child runs only
for the bounded time of a trace.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from typing import Iterator, Optional, Sequence

from agent.errors import InputError, InvalidInput, KernelError
from agent.kernel import nft

TRACE_TABLE = "secgroup_agent_trace"
TRACE_TABLES = (("inet", TRACE_TABLE), ("bridge", TRACE_TABLE))
PRIORITY = -350
_SAFE_MATCH = re.compile(r"^[A-Za-z0-9_.:/,{}\- !=<>\"]*$")


def check_match(match: str) -> str:
    """A match expression is one rule's text: no statement separator, no new line."""
    if not _SAFE_MATCH.match(match) or "meta nftrace" in match:
        raise InvalidInput([InputError("match", match, "an nft match expression (no ';', newlines or quotes "
                                                        "beyond names) is expected, e.g. 'tcp dport 22'")])
    return match.strip()


def _quoted(name: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.:@-]+$", name):
        raise InvalidInput([InputError("--iface", name, "not an interface name")])
    return f'"{name}"'


def arm_script(iface: str, match: str = "", addresses: Sequence[str] = ()) -> str:
    """The trace tables: packets from `iface` (its egress), and to `addresses` (its
    ingress, when known), that also match `match`, are traced."""
    m = check_match(match)
    marks = [f"iifname {_quoted(iface)} {m} meta nftrace set 1"]
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    marks += [f"ip daddr {{ {', '.join(v4)} }} {m} meta nftrace set 1"] if v4 else []
    marks += [f"ip6 daddr {{ {', '.join(v6)} }} {m} meta nftrace set 1"] if v6 else []
    lines = [f"table inet {TRACE_TABLE}", f"delete table inet {TRACE_TABLE}", f"table inet {TRACE_TABLE} {{"]
    for chain, hook in (("pre", "prerouting"), ("out", "output")):
        lines.append(f"\tchain {chain} {{ type filter hook {hook} priority {PRIORITY}; policy accept;")
        lines += [f"\t\t{r}" for r in (marks if hook == "prerouting" else marks[1:])]
        lines.append("\t}")
    lines += ["}", f"table bridge {TRACE_TABLE}", f"delete table bridge {TRACE_TABLE}",
              f"table bridge {TRACE_TABLE} {{",
              f"\tchain pre {{ type filter hook prerouting priority {PRIORITY}; policy accept;",
              *[f"\t\t{r}" for r in marks], "\t}", "}"]
    return "\n".join(lines) + "\n"


def disarm_script() -> str:
    return "".join(f"table {f} {n}\ndelete table {f} {n}\n" for f, n in TRACE_TABLES)


class TraceSession:
    """`nft monitor trace` started, then the trace tables armed; both undone on exit."""

    def __init__(self, script: str, settle: float = 0.5) -> None:
        self.script, self.settle = script, settle
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "TraceSession":
        try:
            # line-buffered: nft's stdio buffers a pipe's output fully (events would arrive at exit)
            stdbuf = [shutil.which("stdbuf") or "stdbuf", "-oL"] if shutil.which("stdbuf") else []
            self.proc = subprocess.Popen(stdbuf + [shutil.which("nft") or "/usr/sbin/nft", "monitor", "trace"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise KernelError(f"cannot start nft monitor trace: {exc}") from exc
        time.sleep(self.settle)          # the monitor's socket is bound before the first traced packet
        try:
            nft.apply_script(self.script, "trace arm")
        except KernelError:
            self._stop()
            raise
        return self

    def lines(self, deadline: float, max_lines: Optional[int] = None) -> Iterator[str]:
        """Trace lines until the monotonic `deadline` (or `max_lines`). Read from the
        pipe's descriptor: a buffered reader would hide lines from select()."""
        assert self.proc is not None and self.proc.stdout is not None
        fd, pending, count = self.proc.stdout.fileno(), b"", 0
        while (left := deadline - time.monotonic()) > 0 and (max_lines is None or count < max_lines):
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                if line.startswith("trace id") and (max_lines is None or count < max_lines):
                    count += 1
                    yield line

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __exit__(self, *exc: object) -> None:
        try:
            nft.apply_script(disarm_script(), "trace disarm")
        finally:
            self._stop()
