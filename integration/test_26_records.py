"""Issue 16 as deployed: a refused probe becomes a JSON log line in the journal.

The package's /etc/default/secgroup-agent starts `run --records` (the NFLOG reader as a
thread of the daemon, lines to the journal under the identifier `secgroup-agent-log`);
the document turns logging of drops on with `log: {drops: true}`. One probe to a port
that sg-web does not open is dropped by the final drop of tap-i1's ingress list, and the
journal then holds the line naming it.
"""
import copy
import json
import time

import pytest

from hypervisor import UNIT
from states import BASE
from topology import Probe as P, check

IDENT = "secgroup-agent-log"


pytestmark = pytest.mark.usefixtures("running_service")   # conftest.py


def log_lines(hv, cursor: str) -> list[dict]:
    out = hv.exec("journalctl", "-t", IDENT, "--no-pager", "-o", "cat", "--after-cursor", cursor,
                  check=False).stdout
    lines = []
    for text in out.splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def test_a_refused_probe_is_a_log_line_in_the_journal(topo, hv):
    opts = hv.exec("systemctl", "show", "-p", "Environment", UNIT, check=False).stdout + \
        hv.exec("cat", "/etc/default/secgroup-agent", check=False).stdout
    assert "--records" in opts, f"the package's defaults do not start the records: {opts}"
    doc = copy.deepcopy(BASE)
    doc["log"] = {"drops": True}
    hv.apply(doc)
    cursor = hv.journal_cursor()
    check(topo, [(P("outside", "i1", "tcp", 9999), False)], "a port sg-web does not open")
    deadline, found = time.monotonic() + 15, []
    while time.monotonic() < deadline and not found:
        found = [ln for ln in log_lines(hv, cursor) if ln.get("type") == "packet" and ln.get("dport") == 9999]
        time.sleep(0.5)
    assert found, f"no log line for the refused probe; journal:\n{hv.journal(cursor)[0]}"
    line = found[0]
    assert (line["interface"], line["direction"], line["verdict"], line["protocol"]) == \
        ("tap-i1", "ingress", "drop", "tcp"), line
    assert line["instance"] == "i1" and line["stage"] == "final", line
    assert line["dst"] == "10.0.0.11" or line["dst"] == "fd00::11", line
