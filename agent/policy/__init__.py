"""Semantics of the desired state (pure): effective lists per interface, first-match
evaluation, the first-hop guard's lines, explain, revocation planning, per-host views.
May import: agent.model, agent.errors.
"""
