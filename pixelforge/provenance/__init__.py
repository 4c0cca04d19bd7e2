"""Responsible generation around the models: prompt moderation (moderation.py)."""
