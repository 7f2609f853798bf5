"""State in, frozen ruleset out (pure): match-space boxes, first-match regions, chains,
shared sets and verdict maps, reuse of the previous build, rendering to nft text and
incremental transaction planning. May import: agent.policy, agent.model, agent.errors.
"""
