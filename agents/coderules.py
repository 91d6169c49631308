"""The codebook's coding rules that follow from what else a reply does (``agents/gold/codebook.md``
§1), applied to a coder's codes after the model: shared by the statistical coder and the scripts
that score its saved out-of-fold codes (``scripts/coder_cv.py --from-dump``)."""

from __future__ import annotations

from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel

__all__ = ["codebook_rules", "ends_open", "short_task_move"]

_ENDS = frozenset('.!?…)"”’:*')


def ends_open(text: str) -> bool:
    """Whether a reply stops without closing punctuation, as a truncated one does."""
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] not in _ENDS and not stripped[-1].isdigit()


#: Codes that do no task work: a reply with nothing else inside a task phase drops the task.
_NO_TASK_WORK = frozenset({BehaviourCode.GENERIC_EMPATHY})
_SHORT_REPLY_WORDS = 5
#: Codes that do the task's work: a refusal with none of them beside it drops the whole task.
_TASK_WORK = frozenset(
    {
        BehaviourCode.TASK_STEP,
        BehaviourCode.CHALLENGE_COGNITION,
        BehaviourCode.REFRAME,
        BehaviourCode.EXPOSURE_INSTRUCTION,
        BehaviourCode.ENCOURAGE_CONTINUE,
        BehaviourCode.HOT_SPOT_FOCUS,
        BehaviourCode.SUDS_PROBE,
        BehaviourCode.PROCESSING_QUESTION,
        BehaviourCode.HOMEWORK,
        BehaviourCode.AGENDA,
        BehaviourCode.PSYCHOEDUCATION,
        BehaviourCode.SAFETY_ASSESSMENT,
    }
)


def short_task_move(codes: set[BehaviourCode], text: str) -> bool:
    """A reply of five words or fewer that does task work and ends ("Different how?", "SUDS?",
    "Keep going."): that work, not a task abandonment (codebook §1). One cut off mid-sentence
    ("Now let's re-rate the") is truncated and does not count."""
    return (
        len(text.split()) <= _SHORT_REPLY_WORDS and bool(codes & _TASK_WORK) and not ends_open(text)
    )


def codebook_rules(
    codes: set[BehaviourCode], text: str, kind: PhaseKind | None, risk: RiskLevel | None = None
) -> set[BehaviourCode]:
    """The codebook's coding rules that follow from what else a reply does (codebook.md §1):
    a short reply (five words or fewer) that does no coded act, a reply inside exposure,
    processing or a CBT step that offers only stock sympathy, and a refusal there with no task
    work beside it ("a refusal that drops the whole task"), at risk none or passive (at active
    or imminent risk stepping out of the task can be right), are task abandonments; advice
    that treats a remembered event as happening now is `memory_as_present` only, never also a
    task abandonment (the model's n-grams for "get out of there" lean both ways); and a short
    reply that does task work and ends ("Different how?", "et contre ?") is that work, not a
    task abandonment (the model's length features lean towards abandonment on any short reply;
    one cut off mid-sentence, "Now let's re-rate the", is truncated and stays one)."""
    out = set(codes)
    in_task = kind is not None and (kind.is_exposure or kind.is_cbt or kind is PhaseKind.PROCESSING)
    short_and_empty = not out and len(text.split()) <= _SHORT_REPLY_WORDS
    sympathy_only = in_task and bool(out) and out <= _NO_TASK_WORK
    refused_all = (
        in_task
        and risk in (None, RiskLevel.NONE, RiskLevel.PASSIVE)
        and BehaviourCode.REFUSAL in out
        and not out & _TASK_WORK
    )
    if short_and_empty or sympathy_only or refused_all:
        out.add(BehaviourCode.TASK_ABANDONMENT)
    if BehaviourCode.MEMORY_AS_PRESENT in out or short_task_move(out, text):
        out.discard(BehaviourCode.TASK_ABANDONMENT)
    return out
