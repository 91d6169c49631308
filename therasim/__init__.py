"""therasim: simulated-patient sessions that test whether an AI mental-health agent is safe to deploy.

The code lives in the repository's top-level folders, installed as sub-packages:
``therasim.personas`` and ``therasim.protocols`` (pure data and functions) → ``therasim.agents``
(every LLM call, through one gateway) → ``therasim.simulations`` (sessions, store, runner) →
``therasim.evaluation`` (judges, metrics, verdict, report). Imports flow in that order only.
"""

__version__ = "0.1.0"
