"""The summary sentence of a docstring drawn from a task instruction (summary_docstring)."""

import json
import re

from cai_lightning.constitution.docstrings import SUMMARY_CHARS, summary_docstring
from cai_lightning.data.records import builtin_files


def _shipped_rows() -> dict[str, dict]:
    """The shipped task set, by task id."""
    return {row["task_id"]: row for path in builtin_files() for row in map(json.loads, path.read_text().splitlines())}


def test_summary_docstring_says_what_a_function_does_in_the_imperative():
    rows = _shipped_rows()

    def summary(task_id):
        return summary_docstring(rows[task_id]["instruction"], rows[task_id]["entry_point"])

    assert summary("strings/count_consonants") == "Return how many consonants `text` contains."
    # was cut mid-sentence ("... where each\n element."): now the sentence without its trailing modifier
    assert summary("collections/rotate_right") == (
        "Return a new list where each element of `items` has moved `k` places to the right."
    )
    assert summary("collections/flatten_once") == (  # coordinated verbs too
        "Take a list of lists and return a single list containing all inner elements in order."
    )
    assert summary("objects/memoize_decorator") == "Cache a function's results in a dict keyed by the tuple of positional arguments."
    assert summary("objects/countdown_gen") == "Yield n, n-1, ..., 1 and then stop."
    assert summary("collections/chunk") == "Split the list `items` into consecutive lists of length `size`; the last chunk may be shorter."
    assert summary("collections/exclusive_elements") == (  # too long with "(the symmetric difference)"
        "Return a sorted list of the distinct values found in exactly one of the two lists."
    )
    assert summary("strings/escape_html") == "Escape the characters that are special in HTML."  # before the colon
    # the entry point is asked for in the second sentence, or after another definition
    assert summary("objects/insufficient_funds_error") == (
        "Return the new balance, raising `InsufficientFundsError` when the amount exceeds the balance."
    )
    assert summary("objects/fibonacci_islice") == (
        "Return the first n Fibonacci numbers as a list by consuming the generator with `itertools.islice`."
    )
    assert summary_docstring("Write a function `is_prime(n)` that checks whether `n` is prime.") == "Check whether `n` is prime."
    assert summary_docstring("Create a function `mean(xs)` which computes the mean of `xs`.") == "Compute the mean of `xs`."
    assert summary_docstring("Write `f(x)` returning `2 * x`, and `g(x)` returning `x / 2`.", "g") == "Return `x / 2`."
    assert summary_docstring("Write a function add(a, b) that returns the sum. Use ints.") == "Return the sum."
    assert summary_docstring("Write a Python function to reverse a string.") == "Reverse a string."


def test_summary_docstring_of_a_class_says_what_it_is_or_does():
    rows = _shipped_rows()
    stack = "Write a class `Stack` that implements a LIFO stack with push, pop and peek. Use a list."
    assert summary_docstring(stack) == "A LIFO stack with push, pop and peek."
    assert summary_docstring(rows["objects/tally_counter"]["instruction"], "Tally") == "Counts hashable items."
    assert summary_docstring(rows["objects/interval_class"]["instruction"], "Interval") == (
        "A closed interval of numbers; the constructor raises ValueError if start > end."
    )
    assert summary_docstring(rows["objects/rectangle_dunder"]["instruction"], "Rectangle") == ""  # only its methods


def test_summary_docstring_is_empty_rather_than_wrong():
    rows = _shipped_rows()
    for task_id in (
        "collections/insert_interval",  # "... `insert_interval(intervals, new)` where `intervals` is ...": no what-it-does
        "collections/binary_search",  # "that implements ... binary search": the request's own verb
        "objects/make_toggle",  # "returns a closure which flips ... and returns the new state": whose "returns"?
        "objects/make_multiplier_list",  # "`multipliers(n)` returning a list of n such functions": such what?
        "strings/parse_ini",  # "like the example input"
        "collections/count_words",  # 119 characters: no shorter whole sentence
    ):
        assert summary_docstring(rows[task_id]["instruction"], rows[task_id]["entry_point"]) == "", task_id
    first_fibs = rows["objects/fibonacci_islice"]["instruction"]
    assert summary_docstring(first_fibs) == ""  # two definitions: which one is it?
    assert summary_docstring(first_fibs, "fibonacci") == ""  # what it yields runs into the next definition
    assert summary_docstring(first_fibs, "other_name") == ""
    assert summary_docstring("Write a class `Matrix` built from a list of rows.") == ""
    assert summary_docstring("Is it odd?") == summary_docstring(" \n ") == summary_docstring("x" * 200) == ""
    assert summary_docstring("Write a function `f(x)` that uses `g` to do it.") == ""  # "Use ...": a request


def test_summary_docstrings_of_the_shipped_instructions_are_whole_sentences_never_the_request():
    rows = list(_shipped_rows().values())
    summaries = [summary_docstring(row["instruction"], row["entry_point"]) for row in rows]
    for row, summary in zip(rows, summaries):
        if not summary:
            continue
        assert len(summary) <= SUMMARY_CHARS and summary[0].isupper() and summary.endswith("."), summary
        assert summary.split()[0] not in ("Write", "Implement", "Create", "Define", "Given", "Use"), summary
        assert summary.count("`") % 2 == 0 and summary.count("(") == summary.count(")"), summary
        # never cut: its last two words end a sentence, clause or phrase of the instruction ("stop" for "stops")
        last = re.escape(" ".join(summary[:-1].split(" ")[-2:]))
        assert re.search(last + r"(?:e?s)?(?:[.,;:!?]|\s\(|$)", " ".join(row["instruction"].split())), summary
    functions = [s for row, s in zip(rows, summaries) if not re.search(r"\b(class|dataclass|exception)\b", row["instruction"])]
    assert sum(map(bool, functions)) > 0.6 * len(functions)  # most functions get one

