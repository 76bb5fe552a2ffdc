"""What runs on the Ray Train controller: the report callback, its outbox, the preemption timeline, kept copies of evaluated checkpoints."""
