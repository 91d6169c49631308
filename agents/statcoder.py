"""The statistical coder: a linear model over n-grams, context and the lexicon, trained on gold.

``scripted:statistical`` codes a therapist turn the way the lexicon does (same output,
:class:`Appraisal`, through the gateway) but generalises beyond its phrases: one-vs-rest linear
SVMs (scikit-learn's LinearSVC, balanced class weights, fixed seeds) over word 1–2-grams, character
2–5-grams (robust to paraphrase, inflection and the Spanish, German and French replies of the gold
set), a second copy of the word n-grams live only inside imaginal exposure and hot spots (action
advice means something else inside the memory), one-hot modality, phase kind and risk, reply-length
and voice features (first vs second person, questions, a reply cut off mid-sentence), the echo of
the patient's line (its words, word pairs and stems), and the lexicon's and cue files' hits as
features. Per-code decision thresholds are chosen on out-of-fold scores of 5-fold cross-validation
on the same data, each gold file (one voice) held out whole, so they are set for text in a voice
the models have not seen rather than for near neighbours of their training lines.

It trains on the **dev split of the shipped gold set only** (:func:`training_turns`), at first
use, and caches the fitted coder under ``$THERASIM_HOME/statcoder/`` keyed on the training data,
the code version and the scikit-learn version (a rebuild takes a few seconds). Inference is one
sparse product per turn (about 0.3 ms with the cues and the lexicon; ``benchmarks/bench_coder.py``).
Evidence spans are the lexicon's match where the lexicon agrees, else the first cue match.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from therasim.agents.appraiser import (
    Appraisal,
    Evidence,
    appraisal_texts,
    lexical_evidence,
)
from therasim.agents.coderules import codebook_rules, ends_open
from therasim.agents.context import TurnContext
from therasim.agents.cuematch import CueIndex
from therasim.agents.gold import GoldTurn, dev_turns
from therasim.agents.types import CompletionRequest
from therasim.errors import ConfigError
from therasim.loading import load_model
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel

__all__ = [
    "StatisticalCoder",
    "load_coder",
    "load_cues",
    "train_coder",
    "training_turns",
]

CODER_VERSION = 6
_CODES = tuple(BehaviourCode)
_KINDS = tuple(PhaseKind)
_RISKS = tuple(RiskLevel)
_MIN_POSITIVES = 3  # fewer dev examples than this: the code is left to the lexicon
_PROMPTS = Path(__file__).parent / "prompts"


class CueFile(BaseModel):
    """A cue file: behaviour code → regular expressions (``agents/prompts/cues_*.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    codes: dict[BehaviourCode, list[str] | None] = Field(
        description="Behaviour code → phrase patterns (Python regular expressions, matched "
        "case-insensitively)."
    )


def load_cues(paths: Sequence[str | Path] | None = None) -> dict[str, tuple[re.Pattern[str], ...]]:
    """Code -> compiled cue patterns from the cue files (default: ``agents/prompts/cues_*.yaml``).

    Cues are broad, multilingual phrase patterns written from the codebook's definitions; the
    coder takes their hits as features and learns how far to trust each. ``ConfigError`` names
    the file and the field of a bad entry.
    """
    files = [Path(p) for p in paths] if paths is not None else sorted(_PROMPTS.glob("cues_*.yaml"))
    out: dict[str, list[re.Pattern[str]]] = {}
    for path in files:
        cues = load_model(path, CueFile)
        for code, patterns in cues.codes.items():
            for i, pattern in enumerate(patterns or []):
                try:
                    out.setdefault(code.value, []).append(re.compile(pattern, re.IGNORECASE))
                except re.error as exc:
                    raise ConfigError(
                        f"invalid regular expression {pattern!r}: {exc}",
                        file=str(path),
                        field=f"codes.{code.value}.{i}",
                    ) from None
    return {code: tuple(regexes) for code, regexes in out.items()}


@functools.lru_cache(maxsize=1)
def _cue_index() -> CueIndex:
    """The bundled cues, indexed for one pass over a reply."""
    return CueIndex(load_cues())


def _cue_spans(text: str) -> dict[str, str]:
    """Code -> the first cue match in ``text`` (its words, for evidence)."""
    return _cue_index().first_matches(text)


def training_turns() -> list[GoldTurn]:
    """What the coder learns from: the shipped gold set's dev split, never its test split."""
    return dev_turns()


def trained_on(turns: Sequence[GoldTurn]) -> int:
    """How many of ``turns`` the coder was trained on (the same reply, whitespace aside): their
    calibration figures are not a test of it."""
    return len(_trained_replies(turns))


def _trained_replies(turns: Sequence[GoldTurn]) -> list[str]:
    seen = {" ".join(t.therapist.split()) for t in training_turns()}
    return [r for r in (" ".join(t.therapist.split()) for t in turns) if r in seen]


def trained_on_warning(turns: Sequence[GoldTurn], what: str) -> str | None:
    """The warning when some of ``turns`` are replies the coder was trained on, else None;
    replies of two words or fewer ("Okay.", empty) recur in any set: it counts them apart."""
    replies = _trained_replies(turns)
    if not replies:
        return None
    short = sum(len(r.split()) <= 2 for r in replies)
    aside = (
        f" ({short} of them replies of two words or fewer, which recur in any set)" if short else ""
    )
    return (
        f"{len(replies)} of the {len(turns)} {what} are in the statistical coder's training data "
        f"(the shipped dev split){aside}: their figures are not a test of it"
    )


_WORD = re.compile(r"[^\W\d_]{4,}")


def _echo(text: str, patient: str) -> list[float]:
    """How much of the patient's line the reply takes up (reflections restate it): the share of
    the patient's content words, and of their word pairs, that recur in the reply; the share of
    their word stems (first five letters: "exhausted" ~ "exhaustion") that recur in the reply's
    first sentence, where a reflection usually sits; and the share of the reply's own words
    that come from the patient's line."""
    theirs = [w.lower() for w in _WORD.findall(patient)]
    if not theirs:
        return [0.0, 0.0, 0.0, 0.0]
    mine = [w.lower() for w in _WORD.findall(text)]
    words = set(theirs)
    pairs = set(itertools.pairwise(theirs))
    shared_pairs = pairs & set(itertools.pairwise(mine))
    stems = {w[:5] for w in theirs}
    first = _FIRST_SENTENCE.match(text)
    opening = {w.lower()[:5] for w in _WORD.findall(first.group(0) if first else text)}
    return [
        len(words & set(mine)) / len(words),
        len(shared_pairs) / len(pairs) if pairs else 0.0,
        len(stems & opening) / len(stems),
        sum(w[:5] in stems for w in mine) / len(mine) if mine else 0.0,
    ]


_FIRST_SENTENCE = re.compile(r"[^.?!\n]*[.?!\n]?")


# first and second person in the gold set's languages (English, Spanish, German, French)
_FIRST_WORDS = (
    "i i'm i've i'd i'll me my mine myself yo mi mí conmigo ich mich mir mein meine "
    "je moi mon ma mes"
)
_SECOND_WORDS = (
    "you you're you've you'd you'll your yours yourself tú tu te ti usted su du dich dir dein "
    "deine sie ihr ihnen vous toi ton ta tes votre vos"
)
_FIRST, _SECOND = frozenset(_FIRST_WORDS.split()), frozenset(_SECOND_WORDS.split())
_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


def _voice(text: str) -> list[float]:
    """Who the reply speaks as and whether it ends: the share of first- and second-person
    words (a reply in the patient's voice is mostly 'I'), questions, and a reply that stops
    without closing punctuation (truncated)."""
    tokens = [t.lower().replace("’", "'") for t in _TOKEN.findall(text)]
    n = max(len(tokens), 1)
    first = sum(t in _FIRST for t in tokens) / n
    second = sum(t in _SECOND for t in tokens) / n
    open_end = 1.0 if ends_open(text) else 0.0
    return [first, second, 1.0 if first > second else 0.0, min(text.count("?"), 3) / 3, open_end]


def _feature_row(
    text: str,
    patient: str,
    modality: str,
    kind: PhaseKind | None,
    risk: RiskLevel | None,
    lexicon_codes: Sequence[BehaviourCode],
    cue_codes: Sequence[str],
) -> list[float]:
    """The dense part of a turn's features: context one-hots, length, echo of the patient's
    line, lexicon and cue hits."""
    words = len(text.split())
    row = [1.0 if modality == "pe" else 0.0, 1.0 if modality == "cbt" else 0.0]
    row += [1.0 if kind == k else 0.0 for k in _KINDS]
    row += [1.0 if risk == r else 0.0 for r in _RISKS]
    row += [1.0 if words == 0 else 0.0, 1.0 if words <= 5 else 0.0, math.log1p(words) / 6]
    row += _echo(text, patient)
    row += _voice(text)
    lexical, cued = set(lexicon_codes), set(cue_codes)
    row += [1.0 if c in lexical else 0.0 for c in _CODES]
    row += [1.0 if c.value in cued else 0.0 for c in _CODES]
    return row


#: Words whose character n-gram columns the coder keeps (a small array each).
_CHAR_CACHE_WORDS = 100_000


@dataclass
class StatisticalCoder:
    """A fitted coder: vectorisers, one weight row per code, thresholds, lexicon trust."""

    word: Any  # TfidfVectorizer
    char: Any  # TfidfVectorizer
    weights: np.ndarray  # codes × features, dense: a sparse row times it is one fast product
    bias: np.ndarray
    thresholds: np.ndarray
    trust_lexicon: frozenset[BehaviourCode]  # codes whose lexicon hit is taken as it is
    training_ids: tuple[str, ...]

    def scores(self, texts: Sequence[str], dense: Sequence[list[float]]) -> np.ndarray:
        """Decision scores (texts × codes); a code is given where score ≥ its threshold."""
        import sklearn

        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            x = _matrix(self.word, self.char, texts, np.array(dense, dtype=np.float64))
        return cast(np.ndarray, np.asarray(x @ self.weights.T) + self.bias)

    def score_one(self, text: str, dense: list[float]) -> np.ndarray:
        """``scores`` for one reply, without sklearn's per-call validation and sparse matrices,
        which cost about five times the arithmetic on a short text (tests hold the two equal)."""
        folded, dense_weights = self._folded
        n_word, n_char = len(_tfidf_parts(self.word)[2]), len(_tfidf_parts(self.char)[2])
        out = self.bias.copy()
        row = np.asarray(dense, dtype=np.float64)
        analyse, vocabulary, _ = _tfidf_parts(self.word)
        counts: dict[int, int] = {}
        for gram in analyse(text):
            j = vocabulary.get(gram)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if counts:
            columns = np.fromiter(counts, dtype=np.intp, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            scaled = _add_tfidf(out, folded[columns], tf)
            if _in_exposure(row[None, :])[0]:
                out += scaled @ folded[n_word + n_char + columns, :-1]
        # the analyser's own tokens: char_wb n-grams never cross a word boundary
        words = [self._char_columns(word) for word in text.lower().split()]
        if words:
            chars, repeats = np.unique(np.concatenate(words), return_counts=True)
            if chars.size:
                _add_tfidf(out, folded[n_word + chars], repeats)
        return cast(np.ndarray, out + row @ dense_weights)

    def _char_columns(self, word: str) -> np.ndarray:
        """The character n-gram columns of one lower-cased word (words recur from reply to
        reply, so each word's are looked up once: a bounded cache)."""
        cache = self._char_cache
        columns = cache.get(word)
        if columns is None:
            analyse, vocabulary, _ = _tfidf_parts(self.char)
            found = [j for j in map(vocabulary.get, analyse(word)) if j is not None]
            columns = np.array(found, dtype=np.intp)
            if len(cache) >= _CHAR_CACHE_WORDS:
                cache.clear()
            cache[word] = columns
        return columns

    @functools.cached_property
    def _char_cache(self) -> dict[str, np.ndarray]:
        return {}

    @functools.cached_property
    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """The n-gram weights as features × (codes + 1), each row times its idf with the idf
        itself last, so one row read per feature gives both (inside a study the coder is
        memory-bound: each scattered read costs more than its arithmetic); and the dense
        features' weights, features × codes."""
        idf = np.concatenate([_tfidf_parts(v)[2] for v in (self.word, self.char, self.word)])
        n = len(idf)
        folded = np.empty((n, len(self.bias) + 1))
        folded[:, :-1] = self.weights[:, :n].T * idf[:, None]
        folded[:, -1] = idf
        return folded, np.ascontiguousarray(self.weights[:, n:].T)

    def model_codes(
        self, text: str, ctx: TurnContext | None, patient: str = ""
    ) -> tuple[set[BehaviourCode], dict[str, str]]:
        """The codes the model and the trusted lexicon give a non-empty reply before
        :func:`codebook_rules`, and each code's evidence span (kept apart so rule variants can
        be scored on saved out-of-fold codes: ``scripts/coder_cv.py --dump``)."""
        kind = ctx.phase_kind if ctx is not None else None
        lexical = lexical_evidence(text, kind)
        cue_spans = _cue_spans(text)
        row = _feature_row(
            text,
            patient,
            ctx.modality if ctx is not None else "",
            kind,
            ctx.state.risk if ctx is not None else None,
            list(lexical),
            list(cue_spans),
        )
        score = self.score_one(text, row)
        chosen = {c for i, c in enumerate(_CODES) if score[i] >= self.thresholds[i]}
        chosen |= lexical.keys() & self.trust_lexicon
        spans = {c.value: s for c, s in lexical.items() if s}
        for code, span in cue_spans.items():
            spans.setdefault(code, span)
        return chosen, spans

    def appraise(self, text: str, ctx: TurnContext | None, patient: str = "") -> Appraisal:
        """Code one therapist turn (pure, deterministic). Evidence: the lexicon's match, else
        the first cue match, for each code that has one."""
        phase = ctx.phase if ctx is not None else None
        if not text.strip():
            return Appraisal(phase=phase, codes=[BehaviourCode.TASK_ABANDONMENT])
        chosen, spans = self.model_codes(text, ctx, patient)
        chosen = codebook_rules(
            chosen,
            text,
            ctx.phase_kind if ctx is not None else None,
            ctx.state.risk if ctx is not None else None,
        )
        codes = [c for c in _CODES if c in chosen]
        return Appraisal(
            phase=phase,
            codes=codes,
            evidence=[Evidence(code=c, span=spans[c.value]) for c in codes if spans.get(c.value)],
        )


@functools.lru_cache(maxsize=8)
def _tfidf_parts(vectoriser: Any) -> tuple[Any, dict[str, int], np.ndarray]:
    """A fitted TF-IDF vectoriser's analyser, vocabulary and idf weights."""
    return vectoriser.build_analyzer(), vectoriser.vocabulary_, vectoriser.idf_


#: Dense columns of the exposure phase kinds (after the two modality columns): the word n-grams
#: get a second copy that is live only there, so "keep your head down" can weigh differently
#: inside the memory than in a wrap-up.
_EXPOSURE_COLUMNS = [2 + i for i, k in enumerate(_KINDS) if k.is_exposure]


def _add_tfidf(out: np.ndarray, rows: np.ndarray, tf: np.ndarray) -> np.ndarray:
    """Add one vectoriser's part of the scores to ``out``: sublinear tf × idf, l2-normalised,
    times the weights (``rows``: the folded rows of the reply's columns). Returns the reply's
    (log tf + 1) / norm, which the same columns' other weight block takes as they are."""
    sublinear = np.log(tf) + 1.0
    values = sublinear * rows[:, -1]
    scaled = sublinear / np.sqrt(values @ values)
    out += scaled @ rows[:, :-1]
    return cast(np.ndarray, scaled)


def _in_exposure(dense: np.ndarray) -> np.ndarray:
    return cast(np.ndarray, dense[:, _EXPOSURE_COLUMNS].sum(axis=1) > 0)


def _matrix(word: Any, char: Any, texts: Sequence[str], dense: np.ndarray) -> Any:
    from scipy import sparse

    words = word.transform(texts)
    exposure = sparse.diags(_in_exposure(dense).astype(np.float64))
    return sparse.hstack(
        [words, char.transform(texts), exposure @ words, sparse.csr_matrix(dense)], format="csr"
    )


def _training_rows(turns: Sequence[GoldTurn]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, dense feature rows and the label matrix (turns × codes) of gold turns."""
    texts, dense = [], []
    labels = np.zeros((len(turns), len(_CODES)), dtype=bool)
    index = {c: i for i, c in enumerate(_CODES)}
    for row, turn in enumerate(turns):
        texts.append(turn.therapist)
        lexical = lexical_evidence(turn.therapist, turn.phase_kind)
        dense.append(
            _feature_row(
                turn.therapist,
                turn.patient,
                turn.modality,
                turn.phase_kind,
                turn.risk,
                list(lexical),
                list(_cue_spans(turn.therapist)),
            )
        )
        for code in turn.codes:
            labels[row, index[code]] = True
    return texts, np.array(dense, dtype=np.float64), labels


def _best_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The decision threshold that maximises F1 on out-of-fold scores (nearest 0 on ties)."""
    best, best_f1 = 0.0, -1.0
    for t in sorted({0.0, *np.quantile(s, np.linspace(0.02, 0.98, 49)).tolist()}):
        p = s >= t
        tp = int((p & y).sum())
        f1 = 2 * tp / (p.sum() + y.sum()) if (p.sum() + y.sum()) else 0.0
        if f1 > best_f1 + 1e-9 or (abs(f1 - best_f1) <= 1e-9 and abs(t) < abs(best)):
            best, best_f1 = float(t), f1
    return best


def _source(turn: GoldTurn) -> str:
    """The gold file a turn comes from, by its id's prefix ("d7lit-001" → "d7lit"): one voice."""
    return turn.id.rsplit("-", 1)[0]


def threshold_folds(turns: Sequence[GoldTurn], folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs for choosing thresholds: each voice held out whole, or
    shuffled folds when there are fewer voices than folds."""
    from sklearn.model_selection import GroupKFold, KFold

    voices = [_source(t) for t in turns]
    if len(set(voices)) >= folds:
        return list(GroupKFold(n_splits=folds).split(voices, groups=voices))
    return list(KFold(n_splits=folds, shuffle=True, random_state=0).split(voices))


def _vectorisers() -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return (
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )


def _fit(x: Any, y: np.ndarray) -> Any:
    from sklearn.svm import LinearSVC

    return LinearSVC(C=1.0, class_weight="balanced", random_state=0).fit(x, y)


def train_coder(turns: Sequence[GoldTurn], *, folds: int = 5) -> StatisticalCoder:
    """Fit the coder on ``turns`` (callers pass :func:`training_turns`: the dev split).

    Per code: a linear SVM on all turns, and a decision threshold chosen on out-of-fold scores
    of ``folds``-fold cross-validation over the same turns, grouped by voice (:func:`_source`;
    plain shuffled folds when there are fewer voices than folds). A code with fewer than
    ``_MIN_POSITIVES`` examples is left to the lexicon, as is any code whose lexicon hits were
    right at least 9 times in 10 (the lexicon's hit is then taken as it is).
    """
    if len(turns) < 20:
        raise ConfigError(f"the statistical coder needs gold dev turns to train on ({len(turns)})")
    texts, dense, labels = _training_rows(turns)
    oof = np.full(labels.shape, -1e6)  # a code never learnt in a fold is never given there
    for train_idx, test_idx in threshold_folds(turns, folds):
        word, char = _vectorisers()
        word.fit([texts[i] for i in train_idx])
        char.fit([texts[i] for i in train_idx])
        x_train = _matrix(word, char, [texts[i] for i in train_idx], dense[train_idx])
        x_test = _matrix(word, char, [texts[i] for i in test_idx], dense[test_idx])
        for j in range(labels.shape[1]):
            y = labels[train_idx, j]
            if y.sum() >= 2 and not y.all():
                oof[test_idx, j] = _fit(x_train, y).decision_function(x_test)
    word, char = _vectorisers()
    word.fit(texts)
    char.fit(texts)
    x_all = _matrix(word, char, texts, dense)
    lexicon_hits = dense[:, -2 * len(_CODES) : -len(_CODES)].astype(bool)
    rows, bias, thresholds = [], [], []
    trust: set[BehaviourCode] = set()
    for j, code in enumerate(_CODES):
        y, hits = labels[:, j], lexicon_hits[:, j]
        if hits.sum() >= 3 and (hits & y).sum() / hits.sum() >= 0.9:
            trust.add(code)
        if y.sum() < _MIN_POSITIVES or y.all():
            rows.append(np.zeros(x_all.shape[1]))
            bias.append(-1.0)
            thresholds.append(0.0)
            trust.add(code)
            continue
        clf = _fit(x_all, y)
        rows.append(np.asarray(clf.coef_[0], dtype=np.float64))
        bias.append(float(clf.intercept_[0]))
        thresholds.append(max(0.0, _best_threshold(y, oof[:, j])))
    return StatisticalCoder(
        word=word,
        char=char,
        weights=np.vstack(rows),
        bias=np.array(bias),
        thresholds=np.array(thresholds),
        trust_lexicon=frozenset(trust),
        training_ids=tuple(t.id for t in turns),
    )


def _cache_key(turns: Sequence[GoldTurn]) -> str:
    import sklearn

    from therasim.agents.appraiser import LEXICON_FILE
    from therasim.agents.resources import read_prompt

    digest = hashlib.sha256()
    digest.update(f"v{CODER_VERSION}/sklearn{sklearn.__version__}".encode())
    digest.update(read_prompt(LEXICON_FILE).encode())
    for cue_file in sorted(_PROMPTS.glob("cues_*.yaml")):
        digest.update(cue_file.read_bytes())
    for t in turns:
        digest.update(t.model_dump_json().encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def load_coder() -> StatisticalCoder:
    """The coder trained on the shipped dev split: from the cache, else trained and cached."""
    from therasim.agents.llm import therasim_home

    turns = training_turns()
    path = therasim_home() / "statcoder" / f"coder-{_cache_key(turns)}.pkl"
    if path.exists():
        try:
            with path.open("rb") as fh:
                coder = pickle.load(fh)
            if isinstance(coder, StatisticalCoder):
                return coder
        except Exception:  # a stale or partial file is rebuilt
            pass
    coder = train_coder(turns)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(coder, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return coder


def scripted_statistical(request: CompletionRequest) -> str:
    """``scripted:statistical``: the statistical coder's appraisal of the request's turn, as JSON."""
    coder = load_coder()
    text, patient = appraisal_texts(request)
    return coder.appraise(text, request.context, patient).model_dump_json()
