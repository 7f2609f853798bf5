"""Fleet tools that judge a desired state before it ships: lint (shadowing, family
checks), diff (what a change allows or cuts), clone. May import: agent.compiler,
agent.policy, agent.model, agent.kernel (diff reads live flows), agent.errors.
"""
