"""HTTP: the lean keep-alive client every per-message request goes through (client.py) and the ingress's request
plumbing (server.py)."""
