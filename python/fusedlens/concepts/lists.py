"""Concept lists: the built-in English ones (a Python module, so they ship in the wheel) and user lists
as JSON (`{"concept": [["king", "queen"], ...]}`). A concept is an ordered pair of word lists x → y
whose difference should carry one attribute (male → female, …) and nothing else."""
from __future__ import annotations

import json
import os


def _pairs(text: str) -> list[tuple[str, str]]:
    """'king queen, man woman' → [("king", "queen"), ("man", "woman")]."""
    return [tuple(p.split()) for p in text.split(",") if p.strip()]


# Words chosen to be common enough to be one token in an English BPE vocabulary (with a leading space);
# a word that is not is skipped and counted at run time, never silently replaced.
BUILTIN: dict[str, list[tuple[str, str]]] = {
    "male→female": _pairs(
        "king queen, man woman, boy girl, father mother, son daughter, brother sister, husband wife, "
        "uncle aunt, nephew niece, he she, his her, prince princess, actor actress, lord lady, "
        "grandfather grandmother, male female, men women, boys girls, kings queens, fathers mothers, "
        "sons daughters, brothers sisters, waiter waitress, god goddess, hero heroine, emperor empress, "
        "duke duchess, monk nun, groom bride, boyfriend girlfriend, dad mom, gentleman lady, sir madam, "
        "host hostess, himself herself"),
    "singular→plural": _pairs(
        "cat cats, dog dogs, house houses, book books, car cars, tree trees, child children, mouse mice, "
        "foot feet, tooth teeth, city cities, country countries, box boxes, day days, year years, "
        "word words, hand hands, eye eyes, friend friends, student students, number numbers, "
        "problem problems, idea ideas, computer computers, table tables, file files, game games, "
        "bird birds, apple apples, river rivers, person people, story stories"),
    "lower→capitalised": _pairs(
        "king King, house House, world World, water Water, paper Paper, music Music, river River, "
        "apple Apple, table Table, light Light, green Green, black Black, white White, red Red, new New, "
        "great Great, north North, south South, star Star, time Time, city City, street Street, "
        "park Park, school School, church Church, state State, home Home, game Game, book Book, "
        "power Power, field Field, island Island"),
    "base→comparative": _pairs(
        "big bigger, small smaller, fast faster, slow slower, tall taller, short shorter, long longer, "
        "old older, young younger, strong stronger, weak weaker, high higher, low lower, hard harder, "
        "easy easier, happy happier, large larger, cheap cheaper, rich richer, poor poorer, warm warmer, "
        "cold colder, hot hotter, dark darker, bright brighter, deep deeper, wide wider, close closer, "
        "safe safer, clean cleaner, good better, bad worse, great greater, simple simpler"),
    "base→superlative": _pairs(
        "big biggest, small smallest, fast fastest, slow slowest, tall tallest, short shortest, "
        "long longest, old oldest, young youngest, strong strongest, weak weakest, high highest, "
        "low lowest, hard hardest, easy easiest, happy happiest, large largest, cheap cheapest, "
        "rich richest, poor poorest, warm warmest, cold coldest, hot hottest, dark darkest, "
        "bright brightest, deep deepest, wide widest, close closest, safe safest, good best, bad worst, "
        "great greatest, simple simplest"),
    "verb→past": _pairs(
        "walk walked, play played, look looked, work worked, talk talked, go went, see saw, take took, "
        "make made, come came, give gave, find found, think thought, know knew, get got, run ran, "
        "eat ate, write wrote, speak spoke, begin began, leave left, bring brought, buy bought, "
        "tell told, feel felt, keep kept, hold held, stand stood, sit sat, win won, lose lost, pay paid, "
        "meet met, build built, send sent"),
    "verb→ing": _pairs(
        "walk walking, play playing, look looking, work working, talk talking, go going, see seeing, "
        "take taking, make making, come coming, give giving, find finding, think thinking, know knowing, "
        "get getting, run running, eat eating, write writing, speak speaking, begin beginning, "
        "leave leaving, bring bringing, buy buying, tell telling, feel feeling, keep keeping, "
        "hold holding, stand standing, sit sitting, win winning, lose losing, pay paying, meet meeting, "
        "build building, send sending"),
    "adjective→adverb": _pairs(
        "quick quickly, slow slowly, easy easily, careful carefully, happy happily, sad sadly, "
        "quiet quietly, loud loudly, soft softly, clear clearly, real really, usual usually, "
        "final finally, rare rarely, recent recently, simple simply, strong strongly, free freely, "
        "open openly, direct directly, exact exactly, complete completely, total totally, "
        "perfect perfectly, nice nicely, bad badly, proper properly, near nearly, "
        "wide widely, deep deeply, full fully, general generally, natural naturally, serious seriously"),
    "country→capital": _pairs(
        "France Paris, Germany Berlin, Italy Rome, Spain Madrid, Japan Tokyo, China Beijing, "
        "Russia Moscow, England London, Egypt Cairo, Greece Athens, Canada Ottawa, Austria Vienna, "
        "Poland Warsaw, Portugal Lisbon, Ireland Dublin, Norway Oslo, Sweden Stockholm, "
        "Denmark Copenhagen, Kenya Nairobi, Peru Lima, Cuba Havana, Thailand Bangkok, Turkey Ankara, "
        "India Delhi, Iran Tehran, Iraq Baghdad, Syria Damascus, Hungary Budapest, Finland Helsinki, "
        "Belgium Brussels, Netherlands Amsterdam, Chile Santiago, Korea Seoul, Vietnam Hanoi, "
        "Philippines Manila, Indonesia Jakarta, Australia Canberra, Switzerland Bern, Scotland Edinburgh"),
    "English→French": _pairs(
        "king roi, queen reine, house maison, water eau, day jour, night nuit, man homme, woman femme, "
        "dog chien, cat chat, book livre, car voiture, city ville, world monde, sun soleil, moon lune, "
        "bread pain, wine vin, friend ami, red rouge, white blanc, black noir, big grand, small petit, "
        "good bon, new nouveau, time temps, year année, love amour, sea mer, tree arbre, head tête, "
        "hand main, mother mère, father père, brother frère, street rue, door porte, life vie, "
        "death mort, war guerre, peace paix, church église, school école, green vert, blue bleu"),
}


# Names typable on a command line: "male-female" or "male->female" for "male→female" (any case).
_ALIASES = {k.lower().replace("→", sep): k for k in BUILTIN for sep in ("-", "->", "→")}


def builtin_names() -> list[str]:
    return list(BUILTIN)


def _check_lists(name: str, obj) -> dict[str, list[tuple[str, str]]]:
    """{concept: [[x, y], ...]} with non-empty string words; anything else is one line naming `name`."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{name}: expected a non-empty object {{\"concept\": [[\"x\", \"y\"], ...]}}, "
                         f"got {type(obj).__name__}")
    out = {}
    for concept, pairs in obj.items():
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"{name}: concept names must be non-empty strings, got {concept!r}")
        if not isinstance(pairs, (list, tuple)) or not pairs:
            raise ValueError(f"{name}: concept {concept!r}: expected a non-empty list of [x, y] pairs")
        checked = []
        for p in pairs:
            if (not isinstance(p, (list, tuple)) or len(p) != 2
                    or not all(isinstance(w, str) and w.strip() for w in p)):
                raise ValueError(f"{name}: concept {concept!r}: expected [x, y] pairs of non-empty words, got {p!r}")
            checked.append((p[0], p[1]))
        out[concept] = checked
    return out


def load_json(path: str) -> dict[str, list[tuple[str, str]]]:
    """A user file of concept lists."""
    if not os.path.isfile(path):
        raise ValueError(f"concepts: {path} is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"concepts: {path} is not valid JSON ({err})") from None
    return _check_lists(f"concepts ({path})", obj)


def resolve(lists=None) -> dict[str, list[tuple[str, str]]]:
    """None → every built-in list; a dict → user lists; a str/list of str → built-in names (comma-separated
    allowed; "male-female" or "male->female" for "male→female") or paths of JSON files, merged in order (a later concept of the same name is an error)."""
    if lists is None:
        return dict(BUILTIN)
    if isinstance(lists, dict):
        return _check_lists("lists", lists)
    items = [lists] if isinstance(lists, str) else list(lists)
    out: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"lists: expected built-in names or JSON paths, got {type(item).__name__}")
        if item.endswith(".json") or os.path.sep in item:
            part = load_json(item)
        else:
            part = {}
            for n in (s.strip() for s in item.split(",") if s.strip()):
                n = _ALIASES.get(n.lower(), n)
                if n not in BUILTIN:
                    raise ValueError(f"lists: unknown concept {n!r}; built-in: {', '.join(BUILTIN)}")
                part[n] = BUILTIN[n]
        for k, v in part.items():
            if k in out:
                raise ValueError(f"lists: concept {k!r} given twice")
            out[k] = v
    if not out:
        raise ValueError("lists: no concept given")
    return out
