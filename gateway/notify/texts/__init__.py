"""Notification texts per language: es.json and en.json (used by gateway/notify/messages.py)."""
