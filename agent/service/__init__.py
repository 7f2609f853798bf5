"""The long-running agent: the daemon loop over a source, its status document, Prometheus
metrics and systemd notification. May import every layer below (reconciler, sources, ...).
"""
