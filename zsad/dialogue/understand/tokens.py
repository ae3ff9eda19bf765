"""Question text as tokens: lower case, contractions spelled out, small typos mended once, up front.

Mending typos here, against the words the phrase tables know, lets every later rule match exactly. A token is
replaced by a table word when it is not itself a known word (a table word or a common English word), starts with
the same letter and is one edit away (a swap of two neighbours counts as one), or two edits for words of 8+
letters of about the same length (two extra letters are a suffix: "completely" is not "complete"). Short words
(up to 5 letters) are mended only for a missing, extra or swapped letter, not a changed one ("pins" is not
"pits"); a 3-letter table word only matches a 2-letter token missing one of its letters ("bg" -> "big"). So
"wher", "defcet", "lareg", "nromal", "scracth" are mended while "there", "find", "best" and "paint" stay
themselves. Filler words ("exactly", "really", "please") and greetings ("good morning") are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: The negation left by a contraction ("isn't" -> "is", "n't").
NEGATION = "n't"

_WORD = re.compile(r"[a-z0-9']+")
#: Contractions written without an apostrophe, and irregular ones.
_SPELLED: dict[str, tuple[str, ...]] = {
    "isnt": ("is", NEGATION), "arent": ("are", NEGATION), "wasnt": ("was", NEGATION),
    "werent": ("were", NEGATION), "doesnt": ("does", NEGATION), "dont": ("do", NEGATION),
    "didnt": ("did", NEGATION), "hasnt": ("has", NEGATION), "havent": ("have", NEGATION),
    "cant": ("can", NEGATION), "cannot": ("can", NEGATION), "can't": ("can", NEGATION),
    "wont": ("will", NEGATION), "won't": ("will", NEGATION), "shouldnt": ("should", NEGATION),
    "wouldnt": ("would", NEGATION), "couldnt": ("could", NEGATION), "aint": ("is", NEGATION),
    "ain't": ("is", NEGATION), "whats": ("what", "is"), "wheres": ("where", "is"), "thats": ("that", "is"),
    "theres": ("there", "is"), "hows": ("how", "is"), "u": ("you",), "r": ("are",), "pls": ("please",),
}
#: Words that add nothing to what is asked ("where exactly is it?", "is there really nothing wrong?").
FILLERS = frozenset({"exactly", "really", "actually", "just", "please", "precisely", "roughly", "approximately",
                     "kindly", "basically", "honestly", "completely", "totally", "entirely", "hi", "hello", "hey"})
#: Greetings, dropped before anything else reads the question ("good morning" is not "good").
GREETINGS = (("good", "morning"), ("good", "afternoon"), ("good", "evening"), ("good", "day"), ("good", "night"))
#: Words whose "'s" is "is" ("it's" -> "it is"); any other "'s" is a possessive and is dropped.
_S_IS = frozenset({"it", "that", "there", "what", "where", "who", "how", "here", "this", "everything",
                   "something", "nothing", "anything"})

#: Common English words that are never "mended" into a table word (those within one edit of one are listed).
COMMON_WORDS = frozenset("""
a an the is are was were be been being am it its this that these those there here what where when who whom whose
why how which do does did done doing have has had can could would should will shall may might must i you we they
he she me my your our us them him her his their of in on at to from by with for about into onto over under
through between and or but so if then than not no yes any some all every each one two three four five ten more
most less least very much many too also just only please look looks looking see seen saw show tell give get got
make makes made say said think thought know knew find found seem seems image images picture photo photos part
parts object objects product products item items sample samples piece pieces surface component components thing
things something anything nothing everything like time day today weather name number colour sky best paint home
hold hope shop skip slip self well tell fair fall foil flow flew flat clear curtain store scope smell wife wise
wine song lung tape typo season lift soft kept court mount mind king dense beat belt best bet past mass mail
food mood hood gold told folk form sore sure cure cost costs price brand made material heavy old new camera
language music poem joke door email boss replacement serial factory line oven temperature operator shift speak
install sell sells company manufactured produced play write translate capital france german resize order
favourite favorite who are you hello hi thanks thank pin pins completely supplier lot buy outside morning
""".split())


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens with contractions spelled out: "Isn't it?" -> ["is", "n't", "it"]."""
    out: list[str] = []
    for word in _WORD.findall(text.lower().replace("’", "'")):
        word = word.strip("'")
        if not word:
            continue
        if word in _SPELLED:
            out.extend(_SPELLED[word])
        elif word.endswith("n't"):
            out += [word[:-3], NEGATION]
        elif word.endswith("'s"):
            out += [word[:-2], "is"] if word[:-2] in _S_IS else [word[:-2]]
        elif word.endswith("'re"):
            out += [word[:-3], "are"]
        elif "'" in word:
            out.append(word.split("'")[0])  # 'll, 've, 'd
        else:
            out.append(word)
    return out


def without_fillers(tokens: Sequence[str]) -> list[str]:
    """``tokens`` without greetings and filler words."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tuple(tokens[i:i + 2]) in GREETINGS:
            i += 2
            continue
        if tokens[i] not in FILLERS:
            out.append(tokens[i])
        i += 1
    return out


def edit_distance(a: str, b: str, limit: int, substitution: int = 1) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute at cost ``substitution``, swap neighbours);
    ``limit + 1`` once over."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else substitution
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


class Speller:
    """Mends tokens into the words of the phrase tables (rules in the module doc); remembers what it mended."""

    def __init__(self, table_words: Iterable[str]) -> None:
        self.targets = sorted({w for w in table_words if len(w) >= 3 and w.isalpha()})
        self.known = frozenset(self.targets) | COMMON_WORDS | {NEGATION}
        self._mended: dict[str, str] = {}

    def _allowed(self, target: str, token: str) -> int:
        if len(target) == 3:
            return 1 if len(token) == 2 else 0
        if len(token) < 3:
            return 0
        return 2 if len(target) >= 8 and abs(len(target) - len(token)) <= 1 else 1

    def mend(self, token: str) -> str:
        if token in self.known or not token.isalpha() or len(token) < 2:
            return token
        if token not in self._mended:
            best: tuple[int, str] | None = None
            for target in self.targets:
                limit = self._allowed(target, token)
                if limit == 0 or target[0] != token[0]:
                    continue
                if len(target) == 3 and not any(target[:i] + target[i + 1:] == token for i in range(3)):
                    continue
                distance = edit_distance(token, target, limit, substitution=1 if len(target) > 5 else 2)
                if distance <= limit and (best is None or distance < best[0]):
                    best = (distance, target)
            self._mended[token] = token if best is None else best[1]
        return self._mended[token]

    def __call__(self, tokens: Sequence[str]) -> list[str]:
        return [self.mend(t) for t in tokens]


def find_all(phrase: Sequence[str], tokens: Sequence[str]) -> list[int]:
    """Every start index where ``phrase`` (a token sequence) occurs in ``tokens``."""
    n = len(phrase)
    return [i for i in range(len(tokens) - n + 1) if list(tokens[i:i + n]) == list(phrase)]
