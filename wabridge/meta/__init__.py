"""The Meta Graph API of the outbound direction: sends, uploads, read marks and their send budget (graph.py)."""
