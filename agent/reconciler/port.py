"""The reconciler's one door to the kernel: the `Kernel` port and its production
implementation over agent.kernel (nft, elements, monitor, conntrack).

Nothing else in agent.reconciler imports agent.kernel; the unit tests use a fake with
the same methods (tests/unit/fake_kernel.py).
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Iterable, Optional, Protocol

from agent.compiler.ruleset import TABLE, Ruleset
from agent.compiler.transaction import ElementChange, NetlinkChanges
from agent.errors import KernelError, NotEncodable
from agent.policy.revocation import Flow

log = logging.getLogger(__name__)
# The one list of the agent's tables: what is applied, listed, watched for drift and flushed.
# `secgroup_agent_trace` (agent.kernel.trace, only while `trace` runs) is deliberately not in it:
# the drift monitor and verify never see the trace tables (tests/unit/test_records_views.py).
OWNED_TABLES: tuple[tuple[str, str], ...] = Ruleset(()).owned
INCREMENTAL = "incremental"
STAGE = "stage"             # a staged load's commit before its last (agent.reconciler.staged)


class Kernel(Protocol):
    def commit(self, script: str, what: str) -> float: ...
    def commit_elements(self, changes: tuple[ElementChange, ...]) -> float: ...
    def commit_changes(self, changes: NetlinkChanges, declared: Optional[Ruleset] = None) -> float: ...
    def listing(self, tables: tuple[tuple[str, str], ...]) -> Optional[str]: ...
    def generation(self) -> int: ...
    def tables_present(self, tables: tuple[tuple[str, str], ...]) -> bool: ...
    def read_stamp(self) -> Optional[str]: ...
    def local_addresses(self) -> frozenset: ...
    def list_flows(self, addresses: Optional[Iterable] = None) -> list[Flow]: ...
    def delete_flows(self, flows: Iterable[Flow]) -> int: ...


class RealKernel:
    """The production boundary modules behind the `Kernel` interface."""

    def commit(self, script: str, what: str) -> float:
        from agent.kernel import nft
        took = nft.apply_script(script, what, trim=what != STAGE)
        if what not in (INCREMENTAL, STAGE):    # (the next stage would build it again)
            nft.apply_script("", "release")     # libnftables frees the big cache on its next call
        return took

    def commit_elements(self, changes: tuple[ElementChange, ...]) -> float:
        from agent.kernel import elements
        if not all(elements.supported(c.set.type, c.set.interval, c.set.map_to) for c in changes):
            raise NotEncodable("not a change of element sets the netlink path handles")
        try:
            return elements.commit_element_changes(changes)
        except ValueError as exc:           # an element it cannot encode: the caller goes on with nft
            raise NotEncodable(f"cannot encode the element changes: {exc}") from exc

    def commit_changes(self, changes: NetlinkChanges, declared: Optional[Ruleset] = None) -> float:
        """Chains refilled and elements changed in one netlink transaction
        (agent.kernel.batch; `declared`: the ruleset the change leads to, whose set types
        the rules' lookups are checked against); KernelError when refused or not
        encodable (then an nft script)."""
        from agent.kernel import batch
        try:
            return batch.commit_netlink_changes(changes, declared)
        except ValueError as exc:           # a rule or element it cannot encode: the caller goes on with nft
            raise NotEncodable(f"cannot encode the rule and element changes: {exc}") from exc

    def listing(self, tables: tuple[tuple[str, str], ...]) -> Optional[str]:
        from agent.kernel import nft
        parts = [nft.list_table(family, name) for family, name in tables]
        return None if all(p is None for p in parts) else "\n".join(p or "" for p in parts)

    def tables_present(self, tables: tuple[tuple[str, str], ...]) -> bool:
        from agent.kernel.monitor import table_names
        try:
            return set(tables) <= table_names()
        except OSError as exc:
            raise KernelError(f"cannot list the nftables tables: {exc}") from exc

    def generation(self) -> int:
        from agent.kernel.monitor import ruleset_generation
        return ruleset_generation()

    def read_stamp(self) -> Optional[str]:
        """The stamp element of the inet table (agent.reconciler.stamp), None when absent."""
        from agent.kernel import nft
        from agent.reconciler.stamp import STAMP_SET
        found = nft.set_elements("inet", TABLE, STAMP_SET)
        return found[0] if len(found) == 1 else None

    def local_addresses(self) -> frozenset:
        """Addresses the applied table holds for local interfaces (for revocation)."""
        from agent.kernel import nft
        out = set()
        for v in (4, 6):
            for text in nft.set_elements("inet", TABLE, f"local_addr{v}"):
                try:
                    out.add(ipaddress.ip_address(text))
                except ValueError:
                    log.debug("local_addr%d: skipping element %s", v, text)
        return frozenset(out)

    def list_flows(self, addresses: Optional[Iterable] = None) -> list[Flow]:
        """Every tracked connection, or those from or to `addresses` (kernel-filtered)."""
        from agent.kernel import conntrack
        return conntrack.list_flows(addresses)

    def delete_flows(self, flows: Iterable[Flow]) -> int:
        from agent.kernel import conntrack
        return conntrack.delete_flows(flows)
