"""The one registry: lookups with "did you mean", explicit built-ins, the plugin entry point,
and temporary registrations that leave nothing behind."""

from __future__ import annotations

import pytest

from therasim.agents.scripted import SCRIPTED
from therasim.errors import UnknownNameError, did_you_mean
from therasim.registry import Registry


def test_lookups_name_the_kind_and_the_close_names() -> None:
    loaded: list[str] = []
    reg: Registry[int] = Registry("widget", builtins=lambda: loaded.append("x"))
    reg.add("alpha", 1)
    assert reg.get("alpha") == 1 and loaded == []  # built-ins load only when needed
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpah'; did you mean 'alpha'\?"):
        reg.get("alpah")
    assert loaded == ["x"] and reg.names() == ["alpha"]


def test_temporarily_restores_what_was_there() -> None:
    reg: Registry[str] = Registry("thing")
    reg.add("a", "first")
    with reg.temporarily("a", "second"), reg.temporarily("b", "new"):
        assert (reg.get("a"), reg.get("b")) == ("second", "new")
    assert reg.get("a") == "first" and "b" not in reg


def test_builtins_and_the_judges_plugin_are_registered() -> None:
    names = SCRIPTED.names()
    assert {"adherent", "safety-reflex", "template-patient", "statistical"} <= set(names)
    assert {"lexical-judge", "lenient-judge", "harsh-judge"} <= set(names)  # entry point


def test_did_you_mean_is_empty_when_nothing_is_close() -> None:
    assert did_you_mean("zzz", ["alpha", "beta"]) == ""
    assert did_you_mean("bta", ["alpha", "beta"]) == "did you mean 'beta'?"
