"""The Cache port's adapters: Redis with a local LRU in front (redis.py) and in-process (memory.py)."""
