"""Publishing desired state to the fleet (etcd), per host.
May import: agent.sources, agent.model, agent.errors.
"""
