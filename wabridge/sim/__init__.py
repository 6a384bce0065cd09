"""Simulators of the two outside parties (Meta and Genesys), for tests, benchmarks and the demo.

They live in the package (not under tests/) because `wabridge sim …` runs them for people trying the bridge
without a Meta app or a Genesys org. Nothing in the bridge imports them.
"""
