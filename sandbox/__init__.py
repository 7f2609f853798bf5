"""The demo's and tests' sandbox hypervisor (network namespaces), traffic probe and the
demo HTTP state server. Not part of the agent: not installed by the package.
"""
