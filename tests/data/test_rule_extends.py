"""A rule list that splices a built-in set (``{extends: <name>}``): the override path of docs/data.md §2, and its
errors in our words."""

import pytest

from lmm.data.sources import RULES_665K, parse_rules


def test_extends_splices_a_built_in_set_after_the_projects_rules():
    rules = parse_rules([{"source": "okvqa", "id_prefix": "okvqa-"}, {"extends": "llava_mix665k"}])
    assert rules[0].source == "okvqa" and rules[0].id_prefix == ("okvqa-",) and rules[1:] == RULES_665K


def test_extends_an_unknown_set_names_the_rule_and_the_known_sets():
    with pytest.raises(ValueError, match=r"source rule 1: .*'llava_mix999k'.*llava_mix665k"):
        parse_rules([{"source": "okvqa", "id_prefix": "okvqa-"}, {"extends": "llava_mix999k"}])


def test_extends_takes_no_other_fields():
    with pytest.raises(ValueError, match=r"source rule 0: 'extends' .* alone.*source"):
        parse_rules([{"extends": "llava_mix665k", "source": "okvqa"}])
