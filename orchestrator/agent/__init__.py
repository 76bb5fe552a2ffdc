"""The node notice agent: a process of its own on every node (``ganray agent``), no torch."""
