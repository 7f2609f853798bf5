"""Bringing the kernel to the desired state: ONE reconciler (keeper) used by `apply`
(oneshot) and the daemon, one result (result), one stamp written by every commit
(stamp), the applied ruleset kept on disk for the boot restore and the next start's
adoption (store), partial drift repair (drift), revocation after the commit (revoke),
and the `Kernel` port, the only door to agent.kernel (port).
May import: agent.kernel (through port only), agent.compiler, agent.policy, agent.model, agent.errors.
"""
