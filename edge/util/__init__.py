"""Small helpers every stage shares: one atomic write, one backoff, redaction of secrets, thread priority,
optional-dependency messages, the stats counters.

May import: nothing of edge/ (the lowest floor, beside edge/commands.py)."""
