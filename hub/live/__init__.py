"""Live delivery: the fan-out from committed events to every subscriber, and the bounded per-connection writers."""
