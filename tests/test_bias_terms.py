from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from audit.config import config_from_text
from audit.errors import ConfigError
from suites.bias import terms
from suites.bias.counterfactual import Lexicon, indefinite_article


@pytest.fixture(scope="module")
def lex() -> Lexicon:
    return Lexicon.default()


def swaps(lex: Lexicon, text: str) -> dict[str, str]:
    return {f"{c.category}:{c.pair}": c.text for c in lex.counterfactuals(text)}


def test_gender_swap_keeps_grammar(lex: Lexicon) -> None:
    out = swaps(lex, "My friend Emily and I ate here. She loved her pasta and I told her so.")
    assert out["gender:female->male"] == "My friend Greg and I ate here. He loved his pasta and I told him so."
    # race swap keeps gender; the pronouns stay
    assert out["race:white->black"].startswith("My friend Lakisha and I ate here. She loved her pasta")
    assert swaps(lex, "HE SAID THE CAR IS HIS.")["gender:male->female"] == "SHE SAID THE CAR IS HERS."
    assert swaps(lex, "I ate here on Jamal's advice.")["gender:male->female"] == "I ate here on Latonya's advice."


def test_articles_case_and_lowercase_corpora(lex: Lexicon) -> None:
    out = swaps(lex, "As an Asian customer, I ordered takeout.")
    assert out["race:asian->black"] == "As a black customer, I ordered takeout."
    assert out["race:asian->hispanic"] == "As a Hispanic customer, I ordered takeout."
    assert swaps(lex, "As a Muslim guest I came.")["religion:muslim->atheist"] == "As an atheist guest I came."
    # a lower-cased corpus (SST-2 style) stays lower-cased
    assert swaps(lex, "a muslim family and a gay man .")["religion:muslim->christian"] == (
        "a christian family and a gay man ."
    )
    assert indefinite_article("LGBT") == "an" and indefinite_article("European") == "a"


def test_ambiguous_terms_need_a_person_context(lex: Lexicon) -> None:
    assert lex.counterfactuals("The coffee was black and the view was old.") == []
    assert "race:black->white" in swaps(lex, "My black neighbor liked it.")
    assert "age:young->old" in swaps(lex, "I am young and I loved it.")
    assert "race:black->white" in swaps(lex, "she is black")
    loose = Lexicon.default(strict=False)
    assert loose.identities("Being black is great") == {"black"}
    assert lex.identities("hug black") == set() and loose.identities("hug black") == {"black"}


def test_mixed_groups_and_names_in_cased_text(lex: Lexicon) -> None:
    # "she ... him": no single gender swap is meaningful
    assert not any(k.startswith("gender:") for k in swaps(lex, "She told him it was fine."))
    # a lower-case "jay" in a cased text is a bird, not a name
    assert lex.counterfactuals("The jay sang.") == []
    assert "gender:male->female" in swaps(lex, "Jay sang.")


def test_identities_from_words_not_names(lex: Lexicon) -> None:
    assert lex.identities("Being african american is great") == {"african american"}
    assert lex.identities("Emily is a Muslim woman", level="group") == {"religion:muslim", "gender:female"}
    assert lex.identities("Greg went home") == set()
    assert lex.identities("She told her father about the Jewish actor") == {"jewish"}


def test_default_lists_are_well_formed() -> None:
    for cat, groups in terms.CATEGORIES.items():
        assert len(groups) >= 2, cat
        seen = {}
        for g, ts in groups.items():
            for t in ts:
                k = " ".join(t.lower().split())
                assert seen.setdefault(k, g) == g, (cat, t)
    gender = terms.CATEGORIES["gender"]
    assert len(gender["female"]) == len(gender["male"])  # aligned pairs
    for g in terms.NAMES.values():
        assert set(g) == {"white", "black", "hispanic", "asian"}


def test_jigsaw_template_terms_are_all_covered(shared_data: Path) -> None:
    lex = Lexicon.default(strict=False, names=False)
    with (shared_data / "jigsaw_sentence_templates" / "en_sentence_templates.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["template"] == "being_adj"]
    wanted = {re.match(r"Being (.*) is ", r["phrase"]).group(1) for r in rows}
    assert len(wanted) == 50
    for r in rows:
        term = re.match(r"Being (.*) is ", r["phrase"]).group(1)
        assert term in lex.identities(r["phrase"]), r["phrase"]


def _bias_config(params: str) -> str:
    return f"model: {{path: m}}\ndata: {{files: {{test: t.jsonl}}}}\nsuites:\n  bias: {params}\n"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{counterfactual: {terms: {religion: {christian: [Christian]}}}}", "at least two groups"),
        ("{counterfactual: {terms: {pets: {cat: [cat, dog], dog: [dog]}}}}", "in two groups"),
        ("{counterfactual: {terms: {pets: {cat: [], dog: [dog]}}}}", "is empty"),
        ("{counterfactual: {categories: [relgion]}}", "did you mean 'religion'"),
        ("{sensitive_columns: [gender, gender]}", "duplicates"),
        ("{identity_sets: [{name: tox, path: t.csv}]}", "identity columns"),
        ("{counterfactual: {max_per_txt: 3}}", "max_per_txt"),
    ],
)
def test_bad_params_are_config_errors(params: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config_from_text(_bias_config(params), name="audit.yaml")
    assert "audit.yaml" in str(err.value)


def test_term_overrides_replace_and_add_categories() -> None:
    cfg = config_from_text(
        _bias_config("{counterfactual: {terms: {pets: {cat: [cat], dog: [dog]}}, categories: [pets, gender]}}")
    )
    params = cfg.suites[0].typed_params()
    assert params.counterfactual.terms["pets"] == {"cat": ["cat"], "dog": ["dog"]}
    from suites.bias.run import BiasSuite

    suite = BiasSuite.__new__(BiasSuite)
    suite.params = params
    lx = suite._lexicon(strict=True)
    assert set(lx.category_names) == {"gender", "pets", "race"}  # names bring race along with gender
    assert {c.pair for c in lx.counterfactuals("my cat and her dog", categories=["pets"])} == set()  # mixed
    assert [c.text for c in lx.counterfactuals("my cat sleeps", categories=["pets"])] == ["my dog sleeps"]
