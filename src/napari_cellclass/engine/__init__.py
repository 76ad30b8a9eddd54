"""Model core: device policy, checkpoint format, training loop, batched inference.

No Qt here: everything is usable from a script, the CLI or a worker thread.
"""
