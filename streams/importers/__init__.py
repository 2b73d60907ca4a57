"""Importers: turn usage recorded by agent harnesses into canonical usage events.

Each importer reads a harness's own on-disk records (for example Claude Code's
session transcripts, see `claude_code`) and yields plain event dicts ready for
`schemas.usage.UsageEvent.model_validate`, with deterministic event ids so that
importing the same files twice produces the same events.
"""
