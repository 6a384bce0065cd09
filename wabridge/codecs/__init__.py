"""Pure data: Meta webhook and Genesys Open Messaging Structs and the transform between them. No I/O here, and
nothing here imports the engine.

Read in this order: meta.py (what Meta sends), genesys.py (what Genesys takes), results.py (what the transform
returns), transform.py (the transform), with sender.py (who the customer is: the identity rules),
agent_text.py (readable text for non-text messages) and timestamps.py (times) beside it.
"""
