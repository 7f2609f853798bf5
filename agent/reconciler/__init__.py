"""Bringing the kernel to the desired state: the one-shot apply and the daemon's keeper.
May import: agent.kernel, agent.compiler, agent.policy, agent.model, agent.errors.
"""
