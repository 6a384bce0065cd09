"""The Genesys Cloud API: OAuth client credentials (auth.py), the rate budget (ratelimit.py), messages and receipts
(open_messaging.py)."""
