"""Simulations: one session as a LangGraph loop, the SQLite store, studies and the runner."""

if (
    __name__ != "therasim.simulations"
):  # pragma: no cover - only reached when imported the wrong way
    raise ImportError(
        "the 'simulations' folder is installed as 'therasim.simulations'; import it as that "
        "(pip install -e . from the repository root)"
    )
