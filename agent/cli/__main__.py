"""`python -m agent.cli`: the command line."""
from agent.cli.main import entry

entry()
