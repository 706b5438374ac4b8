"""The reasoning over the knowledge: an Encounter (encounter.py) becomes facts, the durable-rules
engine fires (engine.py), evaluation.py assembles the answer and ask_next.py ranks the questions."""
