"""Rules that act: conditions and schedules, templates, the action runner and its journal."""
