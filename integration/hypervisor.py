"""The hypervisor container as the tests drive it: desired state in
/etc/secgroup-agent/config.yaml, the agent under systemd (`secgroup-agent.service`, installed
by the Debian package), and the operator's tools (systemctl, journalctl, conntrack, nft).

`apply(doc)` writes the document where the unit reads it (by rename, as an operator's
config management would). When the service is active it waits until the daemon reports
(`secgroup-agent status --json`) the file's revision as applied; otherwise it runs
`secgroup-agent apply -c` itself.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Optional

import yaml

from topology import Container, TopologyError

CONFIG = "/etc/secgroup-agent/config.yaml"
UNIT = "secgroup-agent.service"
AGENT = "secgroup-agent"


class Hypervisor:
    def __init__(self, c: Container):
        self.c = c

    # -- plumbing ------------------------------------------------------------------
    def exec(self, *cmd: str, **kw):
        return self.c.exec(*cmd, **kw)

    def agent(self, *args: str, check: bool = True, timeout: float = 120):
        return self.c.exec(AGENT, *args, check=check, timeout=timeout)

    def has_unit(self) -> bool:
        # the Debian package's unit is in /lib/systemd/system, `make install`'s in /etc
        return self.exec("sh", "-c", f"test -f /lib/systemd/system/{UNIT} || test -f /etc/systemd/system/{UNIT}",
                         check=False).returncode == 0

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120):
        return self.exec("systemctl", *args, check=check, timeout=timeout)

    def daemon_active(self) -> bool:
        return self.systemctl("is-active", "--quiet", UNIT, check=False).returncode == 0

    def main_pid(self) -> int:
        return int(self.systemctl("show", "-p", "MainPID", "--value", UNIT).stdout.strip() or 0)

    def status(self) -> Optional[dict]:
        # exit 1 while the daemon reports errors (refused input): the document still counts
        p = self.agent("status", "--json", check=False, timeout=15)
        try:
            return json.loads(p.stdout)
        except json.JSONDecodeError:
            return None

    def journal(self, since_cursor: Optional[str] = None) -> tuple[str, str]:
        """(text, cursor) of the unit's journal since `since_cursor`."""
        args = ["journalctl", "-u", UNIT, "--no-pager", "-o", "cat", "--show-cursor"]
        if since_cursor:
            args += ["--after-cursor", since_cursor]
        out = self.exec(*args, check=False).stdout
        cursor = since_cursor or ""
        lines = []
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                cursor = line[len("-- cursor: "):].strip()
            else:
                lines.append(line)
        return "\n".join(lines), cursor

    def journal_cursor(self) -> str:
        out = self.exec("journalctl", "-n", "0", "--show-cursor", "--no-pager", check=False).stdout
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                return line[len("-- cursor: "):].strip()
        return ""

    def ruleset(self, stateless: bool = True) -> str:
        """The agent's inet table; `stateless` (default): without counter values, which
        any packet moves (every verdict has a counter)."""
        return self.exec("nft", *(["-s"] if stateless else []), "list", "table", "inet", "secgroup_agent",
                         check=False).stdout

    def conntrack(self) -> str:
        return self.exec("conntrack", "-L", check=False).stdout

    # -- desired state ---------------------------------------------------------------
    @staticmethod
    def dump(doc: Any) -> str:
        return doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)

    def write_config(self, doc: Any, path: str = CONFIG) -> str:
        """Write by rename; return the file's revision as the file source names it."""
        text = self.dump(doc)
        tmp = f"{path}.sgit-tmp"
        self.exec("sh", "-c", f"cat > {tmp} && mv -f {tmp} {path}", input=text)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def apply(self, doc: Any, timeout: float = 30) -> str:
        revision = self.write_config(doc)
        if self.daemon_active():
            self.wait_revision(revision, timeout)
        else:
            p = self.agent("apply", "-c", CONFIG, check=False)
            if p.returncode != 0:
                raise TopologyError(f"secgroup-agent apply: exit {p.returncode}: {p.stdout}{p.stderr}")
        return revision

    def wait_revision(self, revision: str, timeout: float = 30, result: str = "ok") -> dict:
        """Until the daemon enforces `revision` (result "ok"), or reports it refused
        (result "invalid": the last valid revision stays enforced)."""
        deadline = time.monotonic() + timeout
        last: Optional[dict] = None
        while time.monotonic() < deadline:
            last = self.status() or {}
            la = last.get("last_apply") or {}
            if result == "ok" and last.get("revision") == revision and last.get("ready"):
                return last
            if result != "ok" and la.get("revision") == revision and la.get("result") == result:
                return last
            time.sleep(0.2)
        raise TopologyError(f"the daemon did not report revision {revision} as {result} within "
                            f"{timeout}s; last status: {json.dumps(last)[:2000]}\n"
                            f"journal:\n{self.journal()[0][-3000:]}")
