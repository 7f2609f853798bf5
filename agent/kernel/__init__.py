"""The kernel boundary: the only modules that import nftables, pyroute2 sockets or
subprocess. nft (libnftables, one write path), set elements over nfnetlink, the ruleset
monitor, conntrack, links. Kernel errors become agent.errors exceptions here.
May import: agent.compiler, agent.policy, agent.model, agent.errors.
"""
