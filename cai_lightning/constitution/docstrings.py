"""The summary sentence of a docstring, drawn from the task instruction that asked for the definition
(:func:`summary_docstring`): "Write a function `f(xs)` that returns the largest item" → "Return the largest
item." A small grammar of how instructions are phrased, not a model: it writes a whole sentence or nothing."""

from __future__ import annotations

import re


SUMMARY_CHARS = 100
"""Longest sentence :func:`summary_docstring` writes, its period included. A longer description gives
way to a shorter whole sentence (see there), never to a cut one."""

# A sentence ends at . ! or ? before whitespace and a capital, a digit, a code span, a quote or a
# bracket, unless the stop belongs to "e.g." or "i.e."; after an ellipsis, only before a capital
# ("yields 2, 3, 5, ... (by trial division)" goes on).
_SENTENCE_END = re.compile(
    r"""(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\.\.\.)(?<=[.!?])\s+(?=[A-Z0-9`'"(\[])|(?<=\.\.\.)\s+(?=[A-Z])"""
)
# What an instruction calls the definition it asks for ("a recursive Python function", "a dataclass").
_KINDS = re.compile(
    r"\b(?:function|generator|decorator|factory|manager|helper|method|closure|class|dataclass|exception|iterator)\b",
    re.IGNORECASE,
)
_CLASS_KINDS = re.compile(r"\b(?:class|dataclass|exception)\b", re.IGNORECASE)
_WORD = r"(?:(?!(?:that|which|to)\s)[\w-]+\s+)"  # one word of the kind ("recursive"), not the link
# A definition, after a request verb or "and": "Write a Python function `name(args)`", "and a function
# `name(args)`", "Write `name(args)`", "Write a function name(args)", or an unnamed "Write a Python
# function" that says next what it does.
_DEFINITION = re.compile(
    r"\b(?P<verb>write|implement|create|define|generate|develop|design|and|plus)\s+(?:"
    rf"(?P<unnamed>(?:an?\s+)?{_WORD}{{0,3}}?function)(?=\s+(?:that|which|to)\s)"
    rf"|(?P<kind>(?:an?\s+)?{_WORD}{{0,4}}?)"
    r"(?:`(?P<name>[A-Za-z_]\w*)(?:\([^`]*\))?`|(?P<bare>[A-Za-z_]\w*)\([^()`]*\)))",
    re.IGNORECASE,
)
# What links a definition to what it does: "that returns", "which recursively flattens", "returning",
# "to compute", "in Python: return".
_LINK = re.compile(
    r"(?:\s+in\s+Python)?(?:\s+\([^()]*\))?(?:"
    r"\s+(?:that|which)\s+(?P<adverbs>(?:\w+ly\s+)*)(?P<verb>[a-z]+)\b"
    r"|\s+(?P<participle>returning|yielding|representing|implementing)\b"
    r"|\s+to\s+(?P<base>[a-z]+)\b"
    r"|:\s+(?P<command>[a-z]+)\b)"
)
# First words of the request itself, not of a description of the code.
_REQUESTS = frozenset({"write", "implement", "create", "define", "generate", "develop", "design", "given", "use", "using"})
# Words that start a subordinate clause: a verb coordinated after one may be that clause's.
_SUBORDINATORS = frozenset({
    "which", "that", "who", "whose", "where", "when", "while", "if", "unless", "until", "so", "because", "once",
})
_IMPERATIVE_VERBS = frozenset(
    "accept add alternate append apply build calculate call capitalize check clamp classify collapse collect "
    "combine compare compress compute consume convert count cycle decode delete discard draw drop duplicate emit "
    "encode escape evaluate expand express extract fill filter find flatten flip follow format group hide ignore "
    "increment insert interpret invert join keep lowercase make map mark mask merge multiply normalize pad parse "
    "preserve print produce raise read record remove repeat replace rescale restore return reverse rotate round "
    "scale skip sort spell split square stop store strip subtract sum swap take track translate trim turn update "
    "uppercase validate verify walk wrap yield".split()
)
"""Verbs put in the imperative after "and", "or", "but", "then", "otherwise" or a comma ("takes a list
and returns" → "Take a list and return"), where the same word could be a noun ("keys and counts");
the verb right after "that"/"which" always is."""
# A parenthesis that instructs the programmer ("(do not use `math.isqrt`)") instead of describing.
_INSTRUCTION_ASIDE = re.compile(r"\s+\((?:do not|don't|use|hint|note)\b[^()]*\)", re.IGNORECASE)
# A parenthesis the sentence reads as well without: after a word, before the end, a punctuation mark
# or a word (not an operator: "(a * x) % m"), and not an alternative ("(or non-increasing ...)").
_ASIDE = re.compile(
    r"""(?<=[\w`'"]) \((?!or |and |unless |except )[^()]*(?:\([^()]*\)[^()]*)*\)(?=$|[,.;:]|\s[\w`'"])"""
)
# A trailing ", using X", ", in order", ", keeping Y": detail the main clause is whole without.
_MODIFIER = re.compile(r"(?:\w+ing|in|using|without|with|by|as|from|for|e\.g\.)\s")
# Ends of a clause that a colon completes ("in this order: ..."): no sentence without what follows.
_FORWARD = re.compile(r"(?:this order|as follows|the following|these|this form|like this)$", re.IGNORECASE)
# Words pointing back to another definition of the same sentence ("and `multipliers(n)` returning a
# list of n such functions").
_ANAPHORA = re.compile(r"\b(?:such \w+s|those|these)\b")
_QUOTE = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])|\"")  # a quote, not an apostrophe ("Heron's")


def summary_docstring(instruction: str, name: str | None = None) -> str:
    """The summary line of a docstring for the definition a task instruction asks for: a whole sentence
    saying what it does, at most :data:`SUMMARY_CHARS` characters, or "" when the instruction does not
    give one. Never the request itself, never a sentence cut short.

    The sentence comes from the first sentence of ``instruction`` that asks for a definition (of
    ``name``, when given; with ``name`` None, the sentence must ask for one definition only) and says
    what it does after "that"/"which", a participle, "to" or "in Python:":

    - a function is described in the imperative, as PEP 257 asks: "Write a Python function
      `count_consonants(text)` that returns how many consonants `text` contains." → "Return how many
      consonants `text` contains."; "that checks whether" → "Check whether", "which computes" →
      "Compute", "returning X" → "Return X", and so are the verbs it coordinates ("takes a list and
      returns" → "Take a list and return");
    - a class is described by what it is or does, in the third person: "that implements a LIFO stack
      with push and pop" → "A LIFO stack with push and pop.", "that counts hashable items" → "Counts
      hashable items."; one given only by its methods or fields ("with methods `area()` and ...") gets "".

    A description longer than :data:`SUMMARY_CHARS` gives way, in turn, to the same sentence without
    its parentheses, without its trailing modifiers (", keeping the order", ", using `heapq`"), then
    to its first clause (up to "; " or ": "); when none fits, "". So does a description that refers to
    the task's example input, starts with a request verb ("Use ...", "Implement ..."), runs into a
    second definition, or has a verb the imperative cannot be told for ("... when `b` is zero, and
    returns ...": whose verb is it?).
    """
    for sentence in _SENTENCE_END.split(" ".join(instruction.split())):
        definitions = [found for found in _DEFINITION.finditer(sentence) if _is_definition(found, sentence)]
        if name is None and len(definitions) > 1:
            return ""
        for k, found in enumerate(definitions):
            defined = found["name"] or found["bare"]
            if name is not None and name != defined and (defined or len(definitions) > 1):
                continue
            if k + 1 < len(definitions):
                return ""  # what it does runs into the next definition
            is_class = _CLASS_KINDS.search(found["kind"] or found["unnamed"] or "") is not None
            summary = _summary(sentence[found.end():], is_class)
            return "" if k and _ANAPHORA.search(summary) else summary
    return ""


def _is_definition(found: re.Match, sentence: str) -> bool:
    """Whether a :data:`_DEFINITION` match asks for a definition: it names a kind ("and a class `C`"),
    or it follows a request verb at once ("Write `f(x)`"), or "and `f(x)`" says next what it does."""
    if found["unnamed"] or _KINDS.search(found["kind"]):
        return True
    if found["kind"]:
        return False  # "generate every string of `pairs`"
    return found["verb"].lower() not in ("and", "plus") or _LINK.match(sentence, found.end()) is not None


def _summary(rest: str, is_class: bool) -> str:
    """The summary of a definition from what follows its name in the sentence (``rest``), or ""."""
    link = _LINK.match(rest)
    if link is None:
        return ""
    phrase = _INSTRUCTION_ASIDE.sub("", rest[link.end():])
    if is_class:
        verb = link["verb"] or link["participle"] or ""
        if verb in ("implements", "represents", "models", "implementing", "representing"):
            return _fitting(phrase, imperative=False) if re.match(r"\s+an?\s", phrase) else ""
        if link["verb"] and _base_form(verb) and verb not in ("is", "has"):
            return _fitting(link["adverbs"] + verb + phrase, imperative=False)
        return ""
    if link["verb"]:
        verb = _base_form(link["verb"])
    else:
        verb = {"returning": "return", "yielding": "yield"}.get(link["participle"], link["base"] or link["command"])
    return _fitting((link["adverbs"] or "") + verb + phrase, imperative=True) if verb else ""


def _fitting(phrase: str, imperative: bool) -> str:
    """The first of ``phrase``'s whole sentences, longest first, that fits :data:`SUMMARY_CHARS`."""
    bare = _ASIDE.sub(lambda m: m[0] if _inside_quotes(phrase, m.start()) else "", phrase)
    for candidate in (phrase, bare, *_without_modifiers(bare), _first_clause(bare)):
        sentence = _finish(candidate, imperative)
        if sentence and len(sentence) <= SUMMARY_CHARS:
            return sentence
    return ""


def _finish(phrase: str, imperative: bool) -> str:
    """``phrase`` as a sentence: capitalized, ending in a period; "" when it is none to write."""
    phrase = _imperative(phrase.strip()) if imperative else phrase.strip()
    if not phrase or phrase.split(" ")[0].lower() in _REQUESTS or re.search(r"\bexample\b", phrase, re.IGNORECASE):
        return ""
    phrase = phrase[0].upper() + phrase[1:].rstrip(" ,;:")
    return phrase if phrase.endswith(".") else phrase + "."


def _imperative(phrase: str) -> str:
    """``phrase``, which starts with a verb in the imperative, with the verbs coordinated to it in the
    imperative too; "" when such a verb comes after a subordinate clause opens (it may be the clause's)."""
    words = phrase.split(" ")
    subordinate, depth = False, 0
    for i, word in enumerate(words):
        bare = word.rstrip(".,;:)")
        verb = _base_form(bare.lower())
        prev = words[i - 1] if i else ""
        coordinated = prev in ("and", "or", "but", "then", "otherwise") or prev.endswith(",")
        if depth == 0 and coordinated and verb.split("-")[-1] in _IMPERATIVE_VERBS and (
            prev == "then" or i + 1 < len(words) and words[i + 1] != "of"  # not "... and counts." / "counts of"
        ):
            if subordinate:
                return ""
            words[i] = verb + word[len(bare):]
        depth += word.count("(") - word.count(")")
        subordinate = subordinate or depth == 0 and (word.lower() in _SUBORDINATORS or word.endswith((";", ":")))
    return " ".join(words)


def _base_form(word: str) -> str:
    """The base form of a verb in the third person singular ("returns" → "return", "applies" → "apply",
    "matches" → "match"), or "" when ``word`` cannot be one (it does not end in a single "s")."""
    irregular = {"has": "have", "does": "do", "goes": "go", "caches": "cache"}
    if word in irregular:
        return irregular[word]
    if len(word) < 4 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return ""
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")):
        return word[:-2]
    return word[:-1]


def _without_modifiers(phrase: str) -> list[str]:
    """``phrase`` without its trailing modifiers (", keeping the order", ", using `heapq`"), one more
    dropped each time, longest first; what is left is the main clause with less detail, still a whole
    sentence."""
    shorter = []
    while True:
        cut = max(
            (i for i in range(len(phrase)) if phrase.startswith(", ", i) and not _inside_quotes(phrase, i)
             and phrase.count("(", 0, i) == phrase.count(")", 0, i)),
            default=-1,
        )
        if cut < 0 or not _MODIFIER.match(phrase, cut + 2):
            return shorter
        phrase = phrase[:cut]
        shorter.append(phrase)


def _first_clause(phrase: str) -> str:
    """``phrase`` up to its first "; " or ": " outside brackets, code spans and quotes, when what comes
    before is a whole sentence; else ""."""
    depth = 0
    for i, ch in enumerate(phrase):
        depth += (ch in "([") - (ch in ")]")
        if ch in ";:" and phrase.startswith(" ", i + 1) and depth == 0 and not _inside_quotes(phrase, i):
            clause = phrase[:i].rstrip(" ,")
            return "" if _FORWARD.search(clause) else clause
    return ""


def _inside_quotes(text: str, i: int) -> bool:
    """Whether position ``i`` of ``text`` lies inside a code span or a quoted string."""
    return text.count("`", 0, i) % 2 == 1 or len(_QUOTE.findall(text, 0, i)) % 2 == 1
