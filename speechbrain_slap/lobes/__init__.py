"""Modules a user can mix into any SpeechBrain pipeline (``!new:`` from yaml)."""
