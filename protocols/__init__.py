"""Protocols: therapy session phases as validated data, loaded into networkx graphs."""

if __name__ != "therasim.protocols":  # pragma: no cover - only reached when imported the wrong way
    raise ImportError(
        "the 'protocols' folder is installed as 'therasim.protocols'; import it as that "
        "(pip install -e . from the repository root)"
    )
