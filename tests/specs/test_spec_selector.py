import pytest

from specs.selector import LabelSelector

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("env in (prod,staging)", True),
        ("env in (staging)", False),
        ("env notin (dev, staging)", True),
        ("env notin (prod)", False),
        ("missing notin (a)", True),
        ("missing in (a)", False),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web, tier!=db, env in (a,prod), !x, tier", True),
        ("app=web,tier=back", False),
        ("example.com/team=", False),
    ],
)
def test_matches(selector: str, matches: bool) -> None:
    assert LabelSelector.parse(selector).matches(LABELS) is matches


def test_empty_value_matches_empty_label() -> None:
    assert LabelSelector.parse("example.com/team=").matches({"example.com/team": ""})


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("app=web,", "empty term"),
        ("env in (a,b", "unbalanced '('"),
        ("env in a,b)", "unbalanced ')'"),
        ("env in ()", "empty value list"),
        ("a b", "cannot parse selector term 'a b': expected key=value"),
        ("app=we b", "cannot parse selector term"),
        ("-bad=x", "label key '-bad' is invalid"),
        ("app=-bad-", "label value '-bad-' is invalid"),
        ("app=x=y", "cannot parse selector term"),
    ],
)
def test_parse_errors(selector: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        LabelSelector.parse(selector)
    assert message in str(info.value)


def test_round_trip_and_from_labels() -> None:
    text = "app=web,tier!=db,env in (a,b),env notin (c),has,!gone"
    assert str(LabelSelector.parse(text)) == text
    selector = LabelSelector.from_labels({"rack": "r1", "ssd": "true"})
    assert str(selector) == "rack=r1,ssd=true"
    assert selector.matches({"rack": "r1", "ssd": "true", "x": "y"})
    assert not selector.matches({"rack": "r1"})
