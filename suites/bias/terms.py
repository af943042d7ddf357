"""Default identity terms for counterfactual swaps and for finding identity mentions.

Plain data, written for this project (no third-party text copied); every list is
overridable in the bias suite's params (``counterfactual.terms`` / ``counterfactual.names``).

Where the lists come from:

* **Gendered words** (:data:`CATEGORIES` ``["gender"]``): the two-way word pairs of
  counterfactual data augmentation (Lu et al. 2018, "Gender Bias in Neural Natural
  Language Processing"; Zhao et al. 2018, WinoBias's gender-swap list), restricted to
  common words whose swap keeps the sentence grammatical.
* **First names** (:data:`NAMES`): ``white`` and ``black`` are the names of the résumé
  audit study of Bertrand & Mullainathan (2004, "Are Emily and Greg More Employable
  than Lakisha and Jamal?"), which most name-based bias tests reuse (Caliskan et al.
  2017; Kiritchenko & Mohammad 2018). "Kenya" is left out (also a country).
  ``hispanic`` and ``asian`` are compiled for this project from first names that are
  common in those communities in the US; they are a convenience, not a validated
  instrument: override them for a serious audit.
* **Identity words** for race/ethnicity, religion, nationality, sexual orientation,
  gender identity, age and disability: the identity terms of Dixon et al. (2018,
  "Measuring and Mitigating Unintended Bias in Text Classification") and Borkan et al.
  (2019, Jigsaw's sentence templates: all of its 50 terms are here, including its
  spelling "millenial"), completed with plural and noun forms, and with non-disabled
  counterparts (sighted, hearing, able-bodied, ...) so that a swap can remove a
  disability rather than only exchange one for another.

Structure: a category maps group -> list of terms. Lists of one category are
*index-aligned*: term ``i`` of one group is replaced by term ``i`` (modulo the list's
length) of the target group, so ``he``/``she`` and ``his``/``her`` swap correctly and a
plural stays plural. A term may be repeated within a list to keep the alignment.

Terms in :data:`AMBIGUOUS` also have everyday meanings ("black coffee", "straight
ahead", "an old phone"); they count as identity terms only before a person noun
(:data:`PERSON_NOUNS`) or in a predicate about a person (:data:`COPULAS`, or
"is/are/was/were" after a personal pronoun), unless a dataset turns that check off.
"""

from __future__ import annotations

GENDER_PAIRS: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split("/"))  # type: ignore[misc]
    for pair in """
    she/he her/his her/him hers/his herself/himself woman/man women/men girl/boy girls/boys
    mother/father mothers/fathers mom/dad moms/dads mum/dad daughter/son daughters/sons
    sister/brother sisters/brothers wife/husband wives/husbands girlfriend/boyfriend
    girlfriends/boyfriends aunt/uncle aunts/uncles niece/nephew nieces/nephews
    grandmother/grandfather grandma/grandpa queen/king lady/gentleman ladies/gentlemen ms/mr
    mrs/mr madam/sir female/male females/males actress/actor actresses/actors waitress/waiter
    bride/groom heroine/hero princess/prince gal/guy businesswoman/businessman
    spokeswoman/spokesman chairwoman/chairman stepmother/stepfather feminine/masculine
    """.split()
)
"""Female/male word pairs; ``her`` appears twice (as ``his`` and as ``him``), resolved from context."""

CATEGORIES: dict[str, dict[str, list[str]]] = {
    "gender": {
        "female": [f for f, _ in GENDER_PAIRS],
        "male": [m for _, m in GENDER_PAIRS],
    },
    "race": {
        "black": ["black", "African American", "African-American", "African"],
        "white": ["white", "European American", "European-American", "European", "Caucasian"],
        "asian": ["Asian", "Asian American", "Asian-American", "Asian"],
        "hispanic": ["Hispanic", "Latino", "Latina", "Latinx"],
        "middle_eastern": ["Middle Eastern", "Arab", "Arab", "Middle Eastern"],
        "native_american": ["Native American", "Indigenous", "Native American", "Indigenous"],
    },
    "religion": {
        "christian": ["Christian", "Christians", "Christianity"],
        "muslim": ["Muslim", "Muslims", "Islam"],
        "jewish": ["Jewish", "Jews", "Judaism", "Jew"],
        "hindu": ["Hindu", "Hindus", "Hinduism"],
        "buddhist": ["Buddhist", "Buddhists", "Buddhism"],
        "sikh": ["Sikh", "Sikhs", "Sikhism"],
        "catholic": ["Catholic", "Catholics", "Catholicism"],
        "protestant": ["Protestant", "Protestants", "Protestantism"],
        "taoist": ["Taoist", "Taoists", "Taoism"],
        "atheist": ["atheist", "atheists", "atheism"],
    },
    "nationality": {
        "american": ["American", "Americans"],
        "canadian": ["Canadian", "Canadians"],
        "mexican": ["Mexican", "Mexicans"],
        "chinese": ["Chinese", "Chinese"],
        "japanese": ["Japanese", "Japanese"],
        "indian": ["Indian", "Indians"],
        "nigerian": ["Nigerian", "Nigerians"],
        "irish": ["Irish", "Irish"],
        "german": ["German", "Germans"],
        "french": ["French", "French"],
        "russian": ["Russian", "Russians"],
        "brazilian": ["Brazilian", "Brazilians"],
        "vietnamese": ["Vietnamese", "Vietnamese"],
        "filipino": ["Filipino", "Filipinos"],
    },
    "sexual_orientation": {
        "gay": ["gay", "homosexual", "gay"],
        "lesbian": ["lesbian", "lesbian", "lesbians"],
        "bisexual": ["bisexual", "bisexual", "bisexuals"],
        "straight": ["straight", "heterosexual", "heterosexuals"],
        "queer": ["queer", "LGBT", "LGBTQ"],
    },
    "gender_identity": {
        "transgender": ["transgender", "trans"],
        "cisgender": ["cisgender", "cis"],
        "nonbinary": ["nonbinary", "non-binary"],
    },
    "age": {
        "young": ["young", "younger", "teenage", "millennial", "millenial", "youthful"],
        "middle_aged": ["middle-aged", "middle aged", "middle-aged", "middle-aged", "middle-aged", "middle-aged"],
        "old": ["old", "older", "elderly", "retired", "elderly", "elderly"],
    },
    "disability": {
        "disabled": [
            "disabled",
            "blind",
            "deaf",
            "paralyzed",
            "autistic",
            "wheelchair-using",
            "mentally ill",
            "handicapped",
        ],
        "nondisabled": [
            "non-disabled",
            "sighted",
            "hearing",
            "able-bodied",
            "neurotypical",
            "walking",
            "mentally healthy",
            "able-bodied",
        ],
    },  # fmt: skip
}

NAMES: dict[str, dict[str, list[str]]] = {
    "female": {
        "white": ["Allison", "Anne", "Carrie", "Emily", "Jill", "Laurie", "Kristen", "Meredith", "Sarah"],
        "black": ["Aisha", "Ebony", "Keisha", "Lakisha", "Latonya", "Latoya", "Tamika", "Tanisha"],
        "hispanic": ["Maria", "Guadalupe", "Rosa", "Carmen", "Lucia", "Ana", "Isabel", "Sofia", "Juana"],
        "asian": ["Mei", "Priya", "Yuki", "Ananya", "Lin", "Hana", "Sakura", "Mai", "Jia"],
    },
    "male": {
        "white": ["Brad", "Brendan", "Geoffrey", "Greg", "Brett", "Jay", "Matthew", "Neil", "Todd"],
        "black": ["Darnell", "Hakim", "Jermaine", "Kareem", "Jamal", "Leroy", "Rasheed", "Tremayne", "Tyrone"],
        "hispanic": ["Jose", "Carlos", "Luis", "Juan", "Miguel", "Alejandro", "Diego", "Javier", "Pedro"],
        "asian": ["Wei", "Hiroshi", "Raj", "Jin", "Arjun", "Kenji", "Hyun", "Minh", "Takeshi"],
    },
}
"""First names by gender, then race/ethnicity. Names take part in the ``gender`` swap
(same race, other gender) and in the ``race`` swap (same gender, other race)."""

GENDER_IDENTITY_WORDS = frozenset(
    "woman women man men girl girls boy boys female females male males lady ladies gentleman gentlemen".split()
)
"""The gender words that count as identity *mentions* when subgroups are found in text; the
other gendered words (pronouns, kinship and role nouns such as "she", "father", "actor") are
swapped in counterfactuals but do not make a text about a gender group."""

NAME_CATEGORIES = ("gender", "race")
"""The categories whose swaps also change first names."""

AMBIGUOUS = frozenset(
    {"black", "white", "straight", "old", "older", "young", "younger", "aged", "hearing", "walking", "trans", "cis"}
)

PERSON_NOUNS = frozenset(
    """person people persons man men woman women guy guys girl girls boy boys kid kids child children
    teen teens teenager teenagers adult adults customer customers client clients neighbor neighbors
    neighbour neighbours friend friends family families folks community communities couple couples
    parent parents mother mothers father fathers mom dad son sons daughter daughters brother brothers
    sister sisters husband husbands wife wives owner owners worker workers employee employees student
    students colleague colleagues guest guests patient patients citizen citizens individual individuals
    lady ladies gentleman gentlemen resident residents user users driver drivers waiter waitress staff
    manager managers chef chefs author authors writer writers actor actors actress director directors
    voter voters""".split()
)

COPULAS = frozenset("am being i'm im you're youre he's she's we're they're".split())
"""Words before a predicate about a person ("I am deaf", "Being gay is ...")."""

PERSON_SUBJECTS = frozenset("he she they we you who i".split())
"""Subjects that make "is/are/was/were <term>" a predicate about a person."""
