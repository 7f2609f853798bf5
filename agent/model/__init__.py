"""The desired state: schema, loading (one loader for every source), validation (whole and
incremental) and the frozen domain objects. Imports nothing of the agent but `agent.errors`.
"""
