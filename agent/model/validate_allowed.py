"""Checks of allowed address pairs (`allowed_addresses`, SPEC §2) across instances.

An allowed network of one instance may not contain an address another instance holds
as its own, unless that instance lists it as an allowed address too (a shared VIP that
one of them currently also holds). Reads the raw document, like agent.model.validate_refs;
shape errors (bad CIDR, bad MAC) are pydantic's.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterator, Optional

from agent.errors import InputError
from agent.model.schema import IP, Network, parse_address


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> list[tuple[int, dict]]:
    return [(i, x) for i, x in enumerate(_list(value)) if isinstance(x, dict)]


def _network(item: Any) -> Optional[Network]:
    text = item.get("address") if isinstance(item, dict) else item
    try:
        return ipaddress.ip_network(text.strip(), strict=True) if isinstance(text, str) else None
    except ValueError:
        return None


def _address(text: Any) -> Optional[IP]:
    try:
        return parse_address(text.strip()) if isinstance(text, str) else None
    except ValueError:
        return None


def allowed_address_errors(data: dict) -> Iterator[InputError]:
    """Every allowed network that covers another instance's own address which that
    instance does not list as allowed, with its path."""
    own: list[tuple[int, Any]] = []            # (instance index, address)
    allowed: dict[int, list] = {}              # instance index -> its allowed networks
    listed: list[tuple[str, int, Any]] = []    # (path, instance index, network)
    instances = list(_dicts(data.get("instances")))
    if not any(_list(nic.get("allowed_addresses")) for _, inst in instances for _, nic in _dicts(inst.get("interfaces"))):
        return                                 # nothing listed: nothing to check (fleets: 100,000 instances)
    for ii, inst in instances:
        for ni, nic in _dicts(inst.get("interfaces")):
            own += [(ii, a) for a in map(_address, _list(nic.get("addresses"))) if a is not None]
            for ai, item in enumerate(_list(nic.get("allowed_addresses"))):
                net = _network(item)
                if net is not None:
                    allowed.setdefault(ii, []).append(net)
                    listed.append((f"instances[{ii}].interfaces[{ni}].allowed_addresses[{ai}]", ii, net))
    for path, ii, net in listed:
        clash = sorted({str(a) for jj, a in own if jj != ii and a in net
                        and not any(a in other for other in allowed.get(jj, ()))})
        if clash:
            yield InputError(path, str(net), f"covers {', '.join(clash)}, an address of another instance "
                             "that does not list it in its allowed_addresses (a shared VIP must be listed by both)")
