"""The one result of bringing the kernel to a desired state, for `apply` and the daemon."""
from __future__ import annotations

from dataclasses import dataclass

FULL, INCREMENTAL, ELEMENTS, UNCHANGED = "full", "incremental", "elements", "unchanged"


@dataclass(frozen=True)
class ApplyResult:
    mode: str                 # full | incremental | elements | unchanged
    seconds: float            # compile + plan + commit
    nft_seconds: float        # the commit alone
    script_bytes: int         # the nft script, or the text of the elements committed
    revoked: int              # connections deleted (0 when revocation runs in the background)
    errors: tuple[str, ...] = ()     # interfaces compiled closed, and why
    interfaces: int = 0
    chains: int = 0
    sets: int = 0

    @property
    def changed(self) -> bool:
        return self.mode != UNCHANGED

    def summary(self) -> str:
        if not self.changed:
            text = (f"unchanged: the kernel already holds this ruleset ({self.interfaces} interfaces); "
                    f"nothing applied, 0 connections revoked (checked in {self.seconds * 1000:.0f} ms)")
        else:
            text = (f"applied: {self.interfaces} interfaces, {self.chains} chains, {self.sets} sets "
                    f"in {self.seconds * 1000:.0f} ms (kernel {self.nft_seconds * 1000:.0f} ms, {self.mode}); "
                    f"{self.revoked} connections revoked")
        return text + "".join(f"\nerror: {e}" for e in self.errors)
