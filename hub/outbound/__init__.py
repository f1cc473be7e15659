"""Calling other services over HTTP: one retry policy, bounded answers, the SSRF guard."""
