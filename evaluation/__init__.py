"""Evaluation: judges, frames, metrics, the five-axis verdict and reports."""

if __name__ != "therasim.evaluation":  # pragma: no cover - only reached when imported the wrong way
    raise ImportError(
        "the 'evaluation' folder is installed as 'therasim.evaluation'; import it as that "
        "(pip install -e . from the repository root)"
    )
