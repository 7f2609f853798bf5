"""One build's working state (pure): the nft objects made so far and the names they hold.

agent.compiler.compile makes the objects; agent.compiler.memo (`Reuse`) decides what
comes back from the previous build; this module only keeps what the build has and
hands out names, so that two different objects never share one (`claim`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

from agent.compiler.attribution import VerdictId
from agent.compiler.boxes import Box
from agent.compiler.memo import Reuse
from agent.compiler.ruleset import Chain, NftSet
from agent.compiler.intervals import render_interval
from agent.model.objects import DesiredState


@lru_cache(maxsize=1 << 16)
def safe_name(text: str) -> str:
    """A name nft accepts unquoted; a hash keeps distinct inputs distinct."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    if clean != text or len(clean) > 48:
        clean = f"{clean[:40]}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"
    return clean


@dataclass
class Builder:
    """One build's working state: the objects made so far and the names they hold."""
    state: DesiredState
    reuse: Reuse                      # the previous build's entries, and this build's
    sets: dict[str, NftSet] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    owners: dict[str, tuple] = field(default_factory=dict)   # nft name -> what it names
    shared: dict[tuple, str] = field(default_factory=dict)  # (kind, id, version) -> set name
    texts: dict[int, dict] = field(default_factory=lambda: {0: {}, 4: {}, 6: {}})   # interval -> text
    elements: dict[int, dict] = field(default_factory=lambda: {4: {}, 6: {}})       # box -> element text

    def claim(self, base: str, identity: tuple) -> str:
        """The name of the object `identity`: `base`, unless a different object already
        holds it, then `base_2`, `base_3`, ... Two objects can want one name: `safe_name`
        keeps 40 characters and a 24-bit hash, and group ids may contain '+' (groups
        [a, b] and the single group 'a+b' have the same policy key text). Without this
        the second object would silently reuse the first one's chain or set."""
        name, n = base, 1
        while self.owners.setdefault(name, identity) != identity:
            n += 1
            name = f"{base}_{n}"
        return name

    def element(self, version: int, box: Box) -> str:
        """The set element of a region box. One string per distinct box in a build: the
        same boxes recur in every chain that shares groups (at 1,000 interfaces x 100
        rules 800,000 elements are 141,000 distinct texts, 50 MB less to keep)."""
        known = self.elements[version]
        text = known.get(box)
        if text is None:
            text = known[box] = self._element_text(version, box)
        return text

    def _element_text(self, version: int, box: Box) -> str:
        texts = self.texts[version]
        parts = [texts.get(box[0]) or texts.setdefault(box[0], render_interval(version, box[0]))]
        tails = self.texts[0]
        for iv in box[1:]:
            parts.append(tails.get(iv) or tails.setdefault(iv, render_interval(0, iv)))
        return " . ".join(parts)

    def shared_name(self, kind: str, ident: str, version: int) -> str:
        """The name of a shared address set: a group's members (`grp4_<group>`), a prefix
        list's entries (`pl4_<list>`) or the union of those the lines name (`peers4`).
        Built once per build, after the chains (agent.compiler.sets)."""
        key = (kind, ident, version)
        name = self.shared.get(key)
        if name is None:
            base = {"group": f"grp{version}_{safe_name(ident)}", "prefix_list": f"pl{version}_{safe_name(ident)}",
                    "peers": f"peers{version}"}[kind]
            name = self.shared[key] = self.claim(base, ("set", "shared") + key)
        return name

    def goto(self, vid: VerdictId) -> str:
        """`goto v_<n>`: the jump to the verdict chain of `vid` (agent.compiler.verdicts)."""
        return self.reuse.numbering.goto(vid)

    def add_chain(self, name: str, rules: tuple[str, ...]) -> None:
        """A chain; the previous build's object when its rules are the same (so what
        did not change compares by identity downstream)."""
        self.chains[name] = self.reuse.chain(name, rules)

    def drop_chain(self, name: str) -> None:
        del self.chains[name]
        self.reuse.chains.pop(name, None)

    def add_set(self, s: NftSet, identity: tuple) -> str:
        name = self.claim(s.name, ("set",) + identity)
        self.sets.setdefault(name, s if s.name == name else replace(s, name=name))
        return name
