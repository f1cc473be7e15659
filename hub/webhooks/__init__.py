"""Webhooks: inbound (verified, mapped to events) and the signed, SSRF-guarded sender."""
