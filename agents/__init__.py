"""Agents: the LLM gateway, the simulated patient, the model under test and the appraiser."""

if __name__ != "therasim.agents":  # pragma: no cover - only reached when imported the wrong way
    raise ImportError(
        "the 'agents' folder is installed as 'therasim.agents'; import it as that "
        "(pip install -e . from the repository root)"
    )
