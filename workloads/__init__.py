"""LLM-serving traffic on top of the collectives (models, parallelism, arrivals, batching).

Not built yet: see the project's open issues.
"""
