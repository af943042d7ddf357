"""Finding identity terms in text and swapping them for counterfactual-invariance tests.

Torch-free and deterministic. A :class:`Lexicon` compiles the term lists of
:mod:`suites.bias.terms` (or a user's overrides) into one case-insensitive regular
expression with word boundaries, longest terms first, and keeps grammar reasonable
when it swaps:

* case follows the replaced word (``She`` -> ``He``, ``SHE`` -> ``HE``), proper
  adjectives keep their capital (``muslim`` -> ``Christian``) unless the whole text is
  lower-cased (tokenized corpora such as SST-2);
* possessives and punctuation stay attached (``Emily's`` -> ``Greg's``);
* ``her`` becomes ``him`` or ``his`` and ``his`` becomes ``her`` or ``hers`` from the next
  word; ``a``/``an`` before a swapped term is re-chosen (``an Asian`` -> ``a black``);
* terms with an everyday meaning (``black``, ``straight``, ``old``) count only before a
  person noun or after a copula (see :data:`suites.bias.terms.AMBIGUOUS`);
* a text whose terms of one category point to different groups ("she told him") is
  left out of that category rather than half-swapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from suites.bias import terms as default_terms

FUNCTION_WORDS = frozenset(
    """and or but nor yet so to for with at in on from about up out off down over into onto through
    after before by of as if when while than since because again back away home too very well then
    now once twice later soon today tonight yesterday tomorrow anyway the a an that this these those
    who whom what how why where there here i you he she it we they me him her us them my your our
    their its is was are were be been will would can could should shall may might must do does did
    not no never also just still even already""".split()
)

_ARTICLE = re.compile(r"(?<![\w'])(an?|AN?|An)(\s+)$")
_NEXT_WORD = re.compile(r"\s*([A-Za-z][A-Za-z'-]*)")
_PREV_WORD = re.compile(r"([A-Za-z][A-Za-z']*)\s+$")


@dataclass(frozen=True)
class Entry:
    """One meaning of a term: its category, group and position in the group's list."""

    category: str
    group: str
    index: int
    kind: str = "word"  # "word" or "name"
    gender: str | None = None
    race: str | None = None


@dataclass(frozen=True)
class Match:
    """An identity term found in a text."""

    start: int
    end: int
    text: str
    key: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Counterfactual:
    """A text with the terms of one category swapped from ``source`` to ``target`` group."""

    row: int
    category: str
    source: str
    target: str
    text: str

    @property
    def pair(self) -> str:
        return f"{self.source}->{self.target}"


def _key(term: str) -> str:
    return " ".join(term.lower().split())


def indefinite_article(word: str) -> str:
    """``a`` or ``an`` before ``word`` (spelling rules plus the common exceptions)."""
    w = word.lower()
    if w.startswith(("uni", "use", "usu", "eu", "one", "once", "ubi")):
        return "a"
    if w.startswith(("hour", "honest", "honor", "honour", "heir", "lgbt")):
        return "an"
    if len(word) > 1 and word[:2].isupper() and word[0] in "AEFHILMNORSX":
        return "an"  # acronyms read letter by letter: an LGBT group
    return "an" if w[:1] in "aeiou" else "a"


def _case_like(src: str, canonical: str, target: str, all_lower: bool) -> str:
    """Spell ``target`` the way the text spelled ``src`` (whose list spelling is ``canonical``)."""
    if src == canonical:
        return target.lower() if all_lower else target  # "Muslim" -> "atheist", "LGBT" -> "gay"
    if len(src) > 1 and src.isupper():
        return target.upper()
    if src[:1].isupper():
        return target[:1].upper() + target[1:]  # sentence start: "She" -> "He"
    return target.lower()  # the text writes these terms in lower case: keep its style


class Lexicon:
    """Identity terms by category and group, compiled for search and swaps.

    Args:
        categories: category -> group -> index-aligned list of terms.
        names: gender -> race -> first names (they join the ``gender`` and ``race``
            categories), or None for no names.
        strict: require person context for :data:`~suites.bias.terms.AMBIGUOUS` terms.
    """

    def __init__(
        self,
        categories: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        names: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        *,
        strict: bool = True,
        ambiguous: frozenset[str] = default_terms.AMBIGUOUS,
    ) -> None:
        self.categories = {c: {g: list(ts) for g, ts in gs.items()} for c, gs in (categories or {}).items()}
        self.names = {g: {r: list(ns) for r, ns in rs.items()} for g, rs in (names or {}).items()}
        self.strict = strict
        self.ambiguous = frozenset(_key(t) for t in ambiguous)
        entries: dict[str, list[Entry]] = {}
        spelled: dict[str, str] = {}
        for cat, groups in self.categories.items():
            for group, ts in groups.items():
                for i, term in enumerate(ts):
                    k = _key(term)
                    e = Entry(cat, group, i)
                    # a repeated term keeps its first position (the alignment's "home")
                    if not any(x.category == cat and x.group == group for x in entries.get(k, [])):
                        entries.setdefault(k, []).append(e)
                    spelled.setdefault(k, term)
        for gender, races in self.names.items():
            for race, ns in races.items():
                for i, name in enumerate(ns):
                    k = _key(name)
                    for cat, group in (("gender", gender), ("race", race)):
                        entries.setdefault(k, []).append(Entry(cat, group, i, "name", gender, race))
                    spelled.setdefault(k, name)
        self._entries = {k: tuple(v) for k, v in entries.items()}
        self._spelled = spelled
        alts = sorted(self._entries, key=lambda k: (-len(k), k))
        body = "|".join(r"\s+".join(re.escape(p) for p in k.split(" ")) for k in alts)
        self._regex = re.compile(rf"(?<![\w'-])(?:{body})(?![\w-])", re.IGNORECASE) if alts else None

    @classmethod
    def default(cls, *, strict: bool = True, names: bool = True) -> Lexicon:
        """The built-in lists of :mod:`suites.bias.terms`."""
        return cls(default_terms.CATEGORIES, default_terms.NAMES if names else None, strict=strict)

    @property
    def category_names(self) -> list[str]:
        cats = set(self.categories)
        if self.names:
            cats |= {"gender", "race"}
        return sorted(cats)

    def groups(self, category: str) -> list[str]:
        gs = list(self.categories.get(category, {}))
        if category == "gender":
            gs += [g for g in self.names if g not in gs]
        elif category == "race":
            for races in self.names.values():
                gs += [r for r in races if r not in gs]
        return gs

    # -- search -----------------------------------------------------------------------------

    def _person_context(self, text: str, start: int, end: int) -> bool:
        nxt = _NEXT_WORD.match(text, end)
        if nxt and nxt.group(1).lower() in default_terms.PERSON_NOUNS:
            return True
        prev = _PREV_WORD.search(text, 0, start)
        if prev is None:
            return False
        word = prev.group(1).lower()
        if word in default_terms.COPULAS:
            return True  # "I am deaf", "Being gay is ..."
        if word in ("is", "are", "was", "were"):
            subject = _PREV_WORD.search(text, 0, prev.start())
            return bool(subject and subject.group(1).lower() in default_terms.PERSON_SUBJECTS)
        return False

    def find(self, text: str) -> list[Match]:
        """Identity terms in ``text``, left to right."""
        if self._regex is None:
            return []
        cased = any(ch.isupper() for ch in text)
        out = []
        for m in self._regex.finditer(text):
            k = _key(m.group(0))
            entries = self._entries.get(k, ())
            if cased and m.group(0)[:1].islower():
                # a lower-case "jay" or "will" in a cased text is not a name
                entries = tuple(e for e in entries if e.kind != "name")
            if self.strict and k in self.ambiguous and not self._person_context(text, m.start(), m.end()):
                entries = ()
            if entries:
                out.append(Match(m.start(), m.end(), m.group(0), k, entries))
        return out

    def identities(self, text: str, *, level: str = "term", categories: Sequence[str] | None = None) -> set[str]:
        """Identity mentions of ``text`` from identity *words* (names, pronouns and gendered
        role nouns are not; see :data:`~suites.bias.terms.GENDER_IDENTITY_WORDS`).

        ``level="term"`` gives the canonical lower-case term (``"african american"``);
        ``"group"`` gives ``"category:group"`` (``"race:black"``).
        """
        out = set()
        for m in self.find(text):
            for e in m.entries:
                if e.kind != "word" or (categories is not None and e.category not in categories):
                    continue
                if e.category == "gender" and m.key not in default_terms.GENDER_IDENTITY_WORDS:
                    continue  # "she", "father", "actor": gendered, but not a mention of a group
                out.add(m.key if level == "term" else f"{e.category}:{e.group}")
        return out

    # -- swaps ----------------------------------------------------------------------------------

    def _targets(self, category: str, rel: list[tuple[Match, Entry]], source: str) -> list[str]:
        out = []
        for tgt in self.groups(category):
            if tgt == source:
                continue
            ok = True
            for _, e in rel:
                if e.kind == "word":
                    ok = tgt in self.categories.get(category, {})
                elif category == "gender":
                    ok = bool(self.names.get(tgt, {}).get(e.race or ""))
                else:
                    ok = bool(self.names.get(e.gender or "", {}).get(tgt))
                if not ok:
                    break
            if ok:
                out.append(tgt)
        return out

    def _replacement(self, text: str, m: Match, e: Entry, target: str) -> str:
        if e.kind == "name":
            if e.category == "gender":
                pool = self.names[target][e.race or ""]
            else:
                pool = self.names[e.gender or ""][target]
            return pool[e.index % len(pool)]
        pool = self.categories[e.category][target]
        new = pool[e.index % len(pool)]
        if e.category == "gender" and m.key in ("her", "his"):
            nxt = _NEXT_WORD.match(text, m.end)
            # "her" before a noun is a determiner (-> his), otherwise an object (-> him);
            # "his" at the end of a phrase is a pronoun (-> hers)
            standalone = (
                nxt is None or text[m.end : nxt.start(1)].strip() != "" or nxt.group(1).lower() in FUNCTION_WORDS
            )
            if m.key == "her" and _key(new) in ("his", "him"):
                new = "him" if standalone else "his"
            elif m.key == "his" and _key(new) in ("her", "hers"):
                new = "hers" if standalone else "her"
        return new

    def swap(self, text: str, category: str, target: str, matches: list[Match] | None = None) -> str:
        """``text`` with every term of ``category`` replaced by its counterpart in ``target``."""
        matches = self.find(text) if matches is None else matches
        rel = [(m, e) for m in matches for e in m.entries if e.category == category]
        all_lower = not any(ch.isupper() for ch in text)
        out = text
        for m, e in sorted(rel, key=lambda x: -x[0].start):
            new = _case_like(m.text, self._spelled[m.key], self._replacement(text, m, e, target), all_lower)
            out = out[: m.start] + new + out[m.end :]
            art = _ARTICLE.search(out, 0, m.start)
            if art:
                want = indefinite_article(new)
                old = art.group(1)
                if old.lower() != want:
                    fixed = want.upper() if old.isupper() and len(old) > 1 else want
                    if old[:1].isupper():
                        fixed = fixed[:1].upper() + fixed[1:]
                    out = out[: art.start(1)] + fixed + out[art.end(1) :]
        return out

    def counterfactuals(
        self, text: str, *, row: int = 0, categories: Sequence[str] | None = None
    ) -> list[Counterfactual]:
        """Every single-category swap of ``text`` to every other group it can go to."""
        matches = self.find(text)
        if not matches:
            return []
        out = []
        for cat in categories if categories is not None else self.category_names:
            rel = [(m, e) for m in matches for e in m.entries if e.category == cat]
            if not rel:
                continue
            sources = {e.group for _, e in rel}
            if len(sources) != 1:
                continue  # mixed groups ("she told him"): no single swap is meaningful
            src = next(iter(sources))
            for tgt in self._targets(cat, rel, src):
                new = self.swap(text, cat, tgt, matches)
                if new != text:
                    out.append(Counterfactual(row, cat, src, tgt, new))
        return out
