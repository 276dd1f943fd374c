"""Policy.with_call: a call's arguments applied to a client's defaults, checked, and remembered."""

from __future__ import annotations

from typing import Any

import pytest

from mtcache.client.policy import Policy

NONE = {"fail_safe": None, "fail_safe_throttle": None, "soft_timeout": None, "hard_timeout": None,
        "eager_refresh": None, "jitter": None, "cache_none": None, "tags": None}


def call(policy: Policy, **given: Any) -> Policy:
    """``with_call`` as the clients make it: every argument named, None where the call gave none."""
    return policy.with_call(**{**NONE, **given})


def test_a_call_that_gives_nothing_keeps_the_clients_policy() -> None:
    base = Policy(fail_safe=60.0)
    assert call(base) is base


def test_the_same_arguments_give_the_same_policy_object() -> None:
    base = Policy()
    first = call(base, eager_refresh=0.8)
    assert first.eager_refresh == 0.8
    assert call(base, eager_refresh=0.8) is first
    assert call(base, eager_refresh=0.5) is not first
    assert call(Policy(fail_safe=60.0), eager_refresh=0.8) is not first  # another client's defaults


def test_a_call_asking_for_fail_safe_marks_it_explicit() -> None:
    derived = call(Policy(), fail_safe=30)
    assert derived.fail_safe == 30 and derived.explicit_fail_safe
    assert not call(Policy(fail_safe=30.0), eager_refresh=0.8).explicit_fail_safe


@pytest.mark.parametrize(("valid", "invalid", "match"), [
    ({"cache_none": True}, {"cache_none": 1}, "cache_none must be a bool"),
    ({"fail_safe": 1}, {"fail_safe": True}, "fail_safe must be a number"),
    ({"jitter": 0}, {"jitter": False}, "jitter must be a fraction"),
])
def test_an_argument_equal_to_a_remembered_one_but_of_a_wrong_type_still_raises(
    valid: dict[str, Any], invalid: dict[str, Any], match: str
) -> None:
    base = Policy()
    call(base, **valid)
    with pytest.raises(TypeError, match=match):
        call(base, **invalid)


class EqualToAll:
    """An argument that claims to equal anything, None included (as ``unittest.mock.ANY`` does)."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_an_argument_that_claims_to_equal_none_is_still_checked() -> None:
    with pytest.raises(TypeError, match="fail_safe must be a number"):
        call(Policy(), fail_safe=EqualToAll())


def test_an_unknown_argument_raises_even_when_none() -> None:
    with pytest.raises(TypeError, match="unknown get_or_compute argument"):
        Policy().with_call(**NONE, refresh_early=None)


def test_a_call_with_tags_gets_its_own_tags() -> None:
    base = Policy()
    assert call(base, tags=("user:1",)).tags == ("user:1",)
    assert call(base, tags=("user:2",)).tags == ("user:2",)


def test_an_invalid_call_raises_every_time() -> None:
    base = Policy()
    for _ in range(2):
        with pytest.raises(ValueError, match="eager_refresh must be a fraction"):
            call(base, eager_refresh=1.5)
        with pytest.raises(TypeError, match="unknown get_or_compute argument"):
            base.with_call(eager_refresh=0.8, refresh_early=0.8)


def test_an_unhashable_argument_is_checked_as_any_other() -> None:
    with pytest.raises(TypeError, match="fail_safe must be a number"):
        call(Policy(), fail_safe=[30])
    assert call(Policy(), tags=["a"]).tags == ["a"]
