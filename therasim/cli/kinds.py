"""The data-file kinds ``therasim validate`` knows: how a file's kind is told, and the study check.

A file's kind decides which loader checks it; it comes from ``--kind``, else from the file
(``kind_of``). Each kind's own loader lives with its layer; this module only routes to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from therasim.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

#: The data-file kinds ``therasim validate`` knows, each checked by its own loader.
DATA_KINDS = ("persona", "protocol", "study", "rubric", "cues", "lexicon", "gold")
# A file's kind from the folder it sits in (nearest folder first) ...
_KIND_FOLDERS = {
    "personas": "persona",
    "protocols": "protocol",
    "studies": "study",
    "rubrics": "rubric",
    "gold": "gold",
}
# ... or from a top-level key only that kind has (checked first: it survives a move).
_KIND_KEYS = (
    ("subjects", "study"),
    ("transitions", "protocol"),
    ("items", "rubric"),
    ("demographics", "persona"),
    ("fictional", "persona"),
    ("patient_cues", "lexicon"),
    ("codes", "cues"),
)
_PERSONA_KEYS = {"id", "modality", "summary", "communication", "severity"}


def kind_of(path: Path) -> tuple[str | None, ConfigError | None]:
    """The kind of data file ``path`` holds, or None; with the error if the file did not parse.

    A ``.jsonl`` file is gold; a YAML mapping is told by a top-level key only one kind has;
    otherwise (also when the file does not parse) by its folder (``studies/``, ``rubrics/``,
    ``protocols/``, ``personas/``) or a ``cues_`` name; last, a mapping with persona fields is a
    persona (a persona file missing most of its fields still reads as one).
    """
    from therasim.loading import read_data_file

    if path.suffix == ".jsonl":
        return "gold", None
    try:
        doc, problem = read_data_file(path), None
    except ConfigError as exc:
        doc, problem = None, exc
    if isinstance(doc, dict):
        for key, kind in _KIND_KEYS:
            if key in doc:
                return kind, None
    if path.name.startswith("cues_"):
        return "cues", problem
    for folder in reversed(path.resolve().parent.parts):
        if folder in _KIND_FOLDERS:
            return _KIND_FOLDERS[folder], problem
    if isinstance(doc, dict) and len(_PERSONA_KEYS.intersection(map(str, doc))) >= 2:
        return "persona", None
    return None, problem


def validate_study(path: Path) -> str:
    """Check a study file as ``therasim run`` would before simulating: the schema, the persona
    selection, the protocols, rubrics and thresholds it names. Returns its id."""
    from therasim.evaluation.judging.rubric import load_rubrics
    from therasim.personas.loader import load_library
    from therasim.protocols import load_protocol
    from therasim.simulations.study import load_study, study_personas

    study = load_study(path)
    try:
        study_personas(study, load_library())
        for protocol in study.protocols.values():
            load_protocol(protocol)
        if study.rubrics:
            load_rubrics(study.rubrics)
        if study.thresholds:
            from therasim.evaluation.analysis.axes import resolve_thresholds

            resolve_thresholds(study.thresholds)
    except ConfigError as exc:
        raise ConfigError(str(exc), file=str(path), object_id=study.id) from None
    return study.id
