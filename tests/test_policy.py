"""A get_or_compute call's policy: its arguments applied to the client's defaults, checked, and remembered
(ClientCore.call_policy over Policy.with_call). No coordinator: a client makes its policies before it
connects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mtcache import Client
from mtcache.client._core import POLICIES_KEPT, ClientCore
from mtcache.client.policy import Policy

NONE = {"fail_safe": None, "fail_safe_throttle": None, "soft_timeout": None, "hard_timeout": None,
        "eager_refresh": None, "jitter": None, "cache_none": None}


@pytest.fixture
def core() -> Iterator[ClientCore]:
    with Client("/nonexistent/mtcache.sock", spawn=False) as client:
        yield client._core


def call(core: ClientCore, tags: object = (), **given: Any) -> Policy:
    """``call_policy`` as the clients make it: every argument given, None where the call gave none."""
    return core.call_policy(**{**NONE, **given}, tags=tags)


def test_a_call_that_gives_nothing_keeps_the_clients_policy(core: ClientCore) -> None:
    assert call(core) is core.policy


def test_the_same_arguments_give_the_same_policy_object(core: ClientCore) -> None:
    first = call(core, eager_refresh=0.8)
    assert first.eager_refresh == 0.8
    assert call(core, eager_refresh=0.8) is first
    assert call(core, eager_refresh=0.5) is not first
    with Client("/nonexistent/mtcache.sock", spawn=False, fail_safe=60.0) as other:
        derived = call(other._core, eager_refresh=0.8)
    assert derived.fail_safe == 60.0 and derived is not first  # another client's defaults


def test_a_call_asking_for_fail_safe_marks_it_explicit(core: ClientCore) -> None:
    derived = call(core, fail_safe=30)
    assert derived.fail_safe == 30 and derived.explicit_fail_safe
    assert not Policy(fail_safe=30.0).with_call(**{**NONE, "eager_refresh": 0.8}).explicit_fail_safe


@pytest.mark.parametrize(("valid", "invalid", "match"), [
    ({"cache_none": True}, {"cache_none": 1}, "cache_none must be a bool"),
    ({"fail_safe": 1}, {"fail_safe": True}, "fail_safe must be a number"),
    ({"jitter": 0}, {"jitter": False}, "jitter must be a fraction"),
])
def test_an_argument_equal_to_a_remembered_one_but_of_a_wrong_type_still_raises(
    core: ClientCore, valid: dict[str, Any], invalid: dict[str, Any], match: str
) -> None:
    call(core, **valid)
    with pytest.raises(TypeError, match=match):
        call(core, **invalid)


class EqualToAll:
    """An argument that claims to equal anything, None included (as ``unittest.mock.ANY`` does)."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_an_argument_that_claims_to_equal_none_is_still_checked(core: ClientCore) -> None:
    with pytest.raises(TypeError, match="fail_safe must be a number"):
        call(core, fail_safe=EqualToAll())


def test_an_unknown_argument_raises_even_when_none() -> None:
    with pytest.raises(TypeError, match="unknown get_or_compute argument"):
        Policy().with_call(**NONE, refresh_early=None)


def test_a_call_with_tags_gets_its_own_tags(core: ClientCore) -> None:
    assert call(core, tags=["user:1"]).tags == ("user:1",)
    assert call(core, tags=("user:2",)).tags == ("user:2",)
    with pytest.raises(TypeError, match="not a single string"):
        call(core, tags="user:3")


def test_an_invalid_call_raises_every_time(core: ClientCore) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="eager_refresh must be a fraction"):
            call(core, eager_refresh=1.5)


def test_an_unhashable_argument_is_checked_as_any_other(core: ClientCore) -> None:
    with pytest.raises(TypeError, match="fail_safe must be a number"):
        call(core, fail_safe=[30])


def test_a_client_remembers_a_bounded_number_of_policies(core: ClientCore) -> None:
    for i in range(POLICIES_KEPT + 10):
        assert call(core, fail_safe=float(i + 1)).fail_safe == i + 1
    assert 0 < len(core._policies) <= POLICIES_KEPT


class Lying(float):
    """A float whose == and hash say every two of them are the same."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


def test_arguments_of_a_numeric_subclass_are_derived_each_time(core: ClientCore) -> None:
    assert call(core, eager_refresh=Lying(0.5)).eager_refresh == 0.5
    assert call(core, eager_refresh=Lying(0.9)).eager_refresh == 0.9
    with pytest.raises(ValueError, match="eager_refresh must be a fraction"):
        call(core, eager_refresh=Lying(2.0))
