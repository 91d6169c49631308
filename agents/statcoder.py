"""The statistical coder: a linear model over n-grams, context and the lexicon, trained on gold.

``scripted:statistical`` codes a therapist turn the way the lexicon does (same output,
:class:`Appraisal`, through the gateway) but generalises beyond its phrases: one-vs-rest logistic
regressions (scikit-learn, liblinear, fixed seeds) over word 1–2-grams, character 2–5-grams
(robust to paraphrase, inflection and the Spanish, German and French replies of the gold set),
one-hot modality, phase kind and risk, reply-length features, and the lexicon's own hits as
features. Per-code decision thresholds are chosen by 5-fold cross-validation on the same data.

It trains on the **dev split of the shipped gold set only** (:func:`training_turns`), at first
use, and caches the fitted coder under ``$THERASIM_HOME/statcoder/`` keyed on the training data,
the code version and the scikit-learn version (a rebuild takes a few seconds). Inference is one
sparse matrix product per turn (about 1–2 ms; ``benchmarks/bench_coder.py``). Evidence spans are
the lexicon's match where the lexicon agrees, else the reply's sentence that scores highest for
the code.
"""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from therasim.agents.appraiser import (
    Appraisal,
    Evidence,
    lexical_appraisal,
    therapist_text_of,
)
from therasim.agents.context import TurnContext
from therasim.agents.gold import GoldTurn, dev_turns
from therasim.agents.scripted import register_scripted
from therasim.agents.types import CompletionRequest
from therasim.errors import ConfigError
from therasim.personas.dynamics import BehaviourCode, PhaseKind, RiskLevel

__all__ = [
    "StatisticalCoder", "load_coder", "train_coder", "training_turns"]

CODER_VERSION = 1
_CODES = tuple(BehaviourCode)
_KINDS = tuple(PhaseKind)
_RISKS = tuple(RiskLevel)
_MIN_POSITIVES = 3  # fewer dev examples than this: the code is left to the lexicon
_SENTENCE = re.compile(r"[^.!?¿¡\n]+[.!?]*")


def training_turns() -> list[GoldTurn]:
    """What the coder learns from: the shipped gold set's dev split, never its test split."""
    return dev_turns()


def _context_row(modality: str, kind: PhaseKind | None, risk: RiskLevel | None, text: str) -> list[float]:
    words = len(text.split())
    row = [1.0 if modality == "pe" else 0.0, 1.0 if modality == "cbt" else 0.0]
    row += [1.0 if kind == k else 0.0 for k in _KINDS]
    row += [1.0 if risk == r else 0.0 for r in _RISKS]
    row += [1.0 if words == 0 else 0.0, 1.0 if words <= 5 else 0.0, math.log1p(words) / 6]
    return row


def _lexicon_row(codes: Sequence[BehaviourCode]) -> list[float]:
    found = set(codes)
    return [1.0 if c in found else 0.0 for c in _CODES]


@dataclass
class StatisticalCoder:
    """A fitted coder: vectorisers, one weight row per code, thresholds, lexicon trust."""

    word: Any  # TfidfVectorizer
    char: Any  # TfidfVectorizer
    weights: Any  # scipy.sparse CSR, codes × features
    bias: np.ndarray
    thresholds: np.ndarray
    trust_lexicon: frozenset[BehaviourCode]  # codes whose lexicon hit is taken as it is
    training_ids: tuple[str, ...]

    def _features(self, texts: Sequence[str], context: Sequence[list[float]]) -> Any:
        from scipy import sparse

        return sparse.hstack(
            [
                self.word.transform(texts),
                self.char.transform(texts),
                sparse.csr_matrix(np.array(context, dtype=np.float64)),
            ],
            format="csr",
        )

    def scores(self, texts: Sequence[str], context: Sequence[list[float]]) -> np.ndarray:
        """Decision scores (texts × codes); a code is given where score ≥ its threshold."""
        x = self._features(texts, context)
        return np.asarray((x @ self.weights.T).todense()) + self.bias

    def appraise(self, text: str, ctx: TurnContext | None) -> Appraisal:
        """Code one therapist turn (pure, deterministic)."""
        kind = ctx.phase_kind if ctx is not None else None
        risk = ctx.state.risk if ctx is not None else None
        modality = ctx.modality if ctx is not None else ""
        lexical = lexical_appraisal(text, ctx)
        if not text.strip():
            return Appraisal(
                phase=ctx.phase if ctx else None, codes=[BehaviourCode.TASK_ABANDONMENT]
            )
        base = _context_row(modality, kind, risk, text) + _lexicon_row(lexical.codes)
        score = self.scores([text], [base])[0]
        chosen = {c for i, c in enumerate(_CODES) if score[i] >= self.thresholds[i]}
        chosen |= set(lexical.codes) & self.trust_lexicon
        codes = [c for c in _CODES if c in chosen]
        spans = {e.code: e.span for e in lexical.evidence}
        missing = [c for c in codes if c not in spans]
        if missing:
            spans.update(self._sentence_evidence(text, missing, base))
        return Appraisal(
            phase=ctx.phase if ctx else None,
            codes=codes,
            evidence=[Evidence(code=c, span=spans[c]) for c in codes if spans.get(c)],
        )

    def _sentence_evidence(
        self, text: str, codes: list[BehaviourCode], base: list[float]
    ) -> dict[BehaviourCode, str]:
        sentences = [m.group(0).strip() for m in _SENTENCE.finditer(text) if m.group(0).strip()]
        if not sentences:
            return {}
        scores = self.scores(sentences, [base] * len(sentences))
        index = {c: i for i, c in enumerate(_CODES)}
        return {c: sentences[int(np.argmax(scores[:, index[c]]))] for c in codes}


def _training_matrix(turns: Sequence[GoldTurn]) -> tuple[list[str], list[list[float]], np.ndarray]:
    texts, context = [], []
    labels = np.zeros((len(turns), len(_CODES)), dtype=bool)
    index = {c: i for i, c in enumerate(_CODES)}
    for row, turn in enumerate(turns):
        texts.append(turn.therapist)
        lexical = lexical_appraisal(turn.therapist, phase_kind=turn.phase_kind)
        context.append(
            _context_row(turn.modality, turn.phase_kind, turn.risk, turn.therapist)
            + _lexicon_row(lexical.codes)
        )
        for code in turn.codes:
            labels[row, index[code]] = True
    return texts, context, labels


def _best_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The decision threshold that maximises F1 on out-of-fold scores (0 on ties: the model's own)."""
    best, best_f1 = 0.0, -1.0
    for t in sorted({0.0, *np.quantile(s, np.linspace(0.02, 0.98, 49)).tolist()}):
        p = s >= t
        tp = int((p & y).sum())
        f1 = 2 * tp / (p.sum() + y.sum()) if (p.sum() + y.sum()) else 0.0
        if f1 > best_f1 + 1e-9 or (abs(f1 - best_f1) <= 1e-9 and abs(t) < abs(best)):
            best, best_f1 = float(t), f1
    return best


def train_coder(turns: Sequence[GoldTurn]) -> StatisticalCoder:
    """Fit the coder on ``turns`` (callers pass :func:`training_turns`: the dev split)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    if len(turns) < 20:
        raise ConfigError(f"the statistical coder needs gold dev turns to train on ({len(turns)})")
    texts, context, labels = _training_matrix(turns)
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    ctx = sparse.csr_matrix(np.array(context, dtype=np.float64))

    def fit_features(idx: np.ndarray) -> tuple[Any, Any]:
        w = TfidfVectorizer(**word.get_params()).fit([texts[i] for i in idx])
        c = TfidfVectorizer(**char.get_params()).fit([texts[i] for i in idx])
        return w, c

    def matrix(w: Any, c: Any, idx: np.ndarray) -> Any:
        sub = [texts[i] for i in idx]
        return sparse.hstack([w.transform(sub), c.transform(sub), ctx[idx]], format="csr")

    def fit(x: Any, y: np.ndarray) -> Any:
        return LogisticRegression(
            C=8.0, class_weight="balanced", solver="liblinear", max_iter=2000, random_state=0
        ).fit(x, y)

    n = len(turns)
    everything = np.arange(n)
    oof = np.zeros(labels.shape)
    for train_idx, test_idx in KFold(n_splits=5, shuffle=True, random_state=0).split(everything):
        w, c = fit_features(train_idx)
        x_train, x_test = matrix(w, c, train_idx), matrix(w, c, test_idx)
        for j in range(labels.shape[1]):
            y = labels[train_idx, j]
            if y.sum() < 2 or y.all():
                oof[test_idx, j] = -1e6  # never given out of fold
                continue
            oof[test_idx, j] = fit(x_train, y).decision_function(x_test)
    word.fit(texts)
    char.fit(texts)
    x_all = matrix(word, char, everything)
    rows, bias, thresholds = [], [], []
    lexical_hits = np.array([row[-len(_CODES) :] for row in context], dtype=bool)
    trust: set[BehaviourCode] = set()
    for j, code in enumerate(_CODES):
        y = labels[:, j]
        hits = lexical_hits[:, j]
        # the lexicon alone is trusted for a code when it was right 9 times in 10 on dev
        if hits.sum() >= 3 and (hits & y).sum() / hits.sum() >= 0.9:
            trust.add(code)
        if y.sum() < _MIN_POSITIVES or y.all():
            rows.append(sparse.csr_matrix((1, x_all.shape[1])))
            bias.append(-1.0)
            thresholds.append(0.0)
            trust.add(code)  # too few examples to learn: the lexicon decides
            continue
        clf = fit(x_all, y)
        rows.append(sparse.csr_matrix(clf.coef_))
        bias.append(float(clf.intercept_[0]))
        thresholds.append(_best_threshold(y, oof[:, j]))
    return StatisticalCoder(
        word=word,
        char=char,
        weights=sparse.vstack(rows, format="csr"),
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


@register_scripted("statistical")
def scripted_statistical(request: CompletionRequest) -> str:
    """``scripted:statistical``: the statistical coder's appraisal of the request's turn, as JSON."""
    return load_coder().appraise(therapist_text_of(request), request.context).model_dump_json()
