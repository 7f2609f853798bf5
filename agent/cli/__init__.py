"""The `secgroup-agent` command line: argument parsing and output only; the work is done by
the layers below. May import everything in agent.
"""
