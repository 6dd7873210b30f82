"""The judge: the tests run in a process of their own and see the program's values only as plain data or
proxies. The codec is tested in-process (it is the one piece that parses what a program sends); the
semantics through ``run``, where a test's verdict must be the same as if the tests had run next to the
program, except where the program's objects would lie."""

from __future__ import annotations

import os

import pytest

from cai_lightning import sandbox
from cai_lightning.sandbox import Limits, run, wire

FAST = Limits(timeout_s=10, cpu_s=5, memory_mb=256)


class _Plain(wire.Endpoint):
    """An end with no handles: what plain data does on the wire."""

    def __init__(self) -> None:
        super().__init__(-1, -1)


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -1, 2**200, -(2**70), 1.5, float("inf"), 1e-300, 2 + 3j, "", "héllo \udc80", b"\x00\xff",
        range(2, 10, 3), (1, (2, "x")), frozenset({1, "a"}), [1, [2, [3]]], {"a": 1, (1, 2): [3]}, {1, 2},
        bytearray(b"ab"), ValueError, KeyError("k"), len, sorted, int,
    ],
    ids=repr,
)
def test_plain_values_round_trip_exactly(value):
    end = _Plain()
    back = end.decode(end.encode(value))
    assert type(back) is type(value) and (back == value or repr(back) == repr(value))


def test_subclasses_of_plain_types_arrive_as_the_plain_value():
    class Lying(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class Shouting(str):
        def __str__(self):
            return "LOUD"

    end = _Plain()
    back = end.decode(end.encode([Lying(7), Shouting("quiet")]))
    assert back == [7, "quiet"] and [type(v) for v in back] == [int, str]
    assert back[0] != 3


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "cut short"),
        (b"Q", "unknown tag"),
        (b"s\x05\x00\x00\x00ab", "cut short"),
        (b"s\x02\x00\x00\x00\xff\xfe", "not UTF-8"),
        (b"NN", "trailing"),
        (b"L\x00\x00\x00\x00\x02\x00\x00\x00N", "cut short"),
        (b"Z\x01\x00\x00\x00L\x00\x00\x00\x00\x00\x00\x00\x00", "unhashable"),
        (b"E\x03\x00\x00\x00len", "not a builtin exception"),
        (b"n\x04\x00\x00\x00exec", "not a builtin"),  # a builtin, but never by name
        (b"n\x08\x00\x00\x00__import", "not a builtin"),
        (b"h\x01\x00\x00\x00o", "unexpected handle"),
        (b"j\x01\x00\x00\x00\x00\x00\x00\x00", "unexpected judge object"),
        (b"r" + b"i\x01\x00\x00\x00\x01" * 2 + b"i\x00\x00\x00\x00", "bad range"),
        (b"X\x00\x00\x00\x00i\x01\x00\x00\x00\x01t\x00\x00\x00\x00", "bad exception"),
    ],
    ids=["empty", "unknown-tag", "short-str", "bad-utf8", "trailing", "short-list", "unhashable", "not-exception",
         "exec", "private-builtin", "handle", "judge-object", "zero-step", "bad-exception"],
)
def test_the_decoder_refuses_what_is_not_a_valid_message(data, match):
    end = _Plain()
    with pytest.raises(wire.WireError, match=match):
        end.decode(data)


def test_nesting_deeper_than_the_limit_is_refused_not_a_recursion_error():
    end = _Plain()
    deep = b"L\x00\x00\x00\x00\x01\x00\x00\x00" * (wire.MAX_DEPTH + 5) + b"N"
    with pytest.raises(wire.WireError, match="too deep"):
        end.decode(deep)


def test_a_frame_over_the_limit_is_refused_before_it_is_read():
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, (wire.MAX_FRAME + 1).to_bytes(4, "little"))
        with pytest.raises(wire.WireError, match="over the limit"):
            wire.Endpoint(read_fd, write_fd).receive()
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- what the tests see, through the sandbox ---------------------------------------------------------


@pytest.mark.parametrize(
    "program",
    [
        "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\ndef add(a, b):\n    return Yes()",
        "class Seven(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return Seven(7)",
        "class Num:\n    def __lt__(self, o):\n        return True\n    __gt__ = __le__ = __ge__ = __lt__\ndef add(a, b):\n    return Num()",
        "def len(x):\n    return 3\ndef add(a, b):\n    return [0]",
    ],
    ids=["eq-always-true", "int-subclass", "orders-always-true", "shadows-len"],
)
def test_objects_that_lie_about_their_value_do_not_pass(program):
    tests = "r = add(1, 2)\nassert r == 3 or (r >= 3 and r <= 3) or len(r) == 3"
    result = run(program, tests, limits=FAST)
    assert not result.passed and result.status in ("failed", "error"), result


def test_program_objects_compare_hash_and_raise_as_the_program_defines_them():
    program = (
        "from dataclasses import dataclass\n"
        "@dataclass(frozen=True)\nclass Cell:\n    x: int\n    y: int\n"
        "    def __add__(self, o):\n        return Cell(self.x + o.x, self.y + o.y)\n"
        "class Broke(ValueError):\n    def __init__(self, amount):\n        super().__init__(f'short by {amount}')\n"
        "        self.amount = amount\n"
        "def take(n):\n    if n > 3:\n        raise Broke(n - 3)\n    return n\n"
        "def gen(n):\n    yield from range(n)\n"
    )
    tests = (
        "assert Cell(1, 2) + Cell(3, 4) == Cell(4, 6) and Cell(0, 0) != Cell(0, 1)\n"
        "assert len({Cell(0, 0), Cell(0, 0), Cell(1, 0)}) == 2 and isinstance(Cell(0, 0), Cell)\n"
        "assert str(Cell(1, 2)) == 'Cell(x=1, y=2)' and Cell(5, 6).y == 6\n"
        "assert list(gen(3)) == [0, 1, 2] and sum(gen(4)) == 6\n"
        "try:\n    take(5)\nexcept Broke as err:\n    assert err.amount == 2 and str(err) == 'short by 2'\n"
        "else:\n    raise AssertionError('no Broke')\n"
        "assert issubclass(Broke, ValueError) and Broke(4).amount == 4\n"
        "try:\n    take(9)\nexcept ValueError:\n    pass\n"
    )
    result = run(program, tests, limits=FAST)
    assert result.passed, result.message


def test_the_tests_containers_are_shared_and_their_callables_called_back():
    program = (
        "def push_all(xs, *items):\n    xs.extend(items)\n    return xs\n"
        "def apply_each(f, xs):\n    return [f(x) for x in xs]\n"
        "def first_two(it):\n    return [next(it), next(it)]\n"
        "import functools\ndef named(f):\n    @functools.wraps(f)\n    def w(*a):\n        return f(*a)\n    return w\n"
        "count = 0\ndef bump():\n    global count\n    count += 1\n"
    )
    tests = (
        "data = [1]\nassert push_all(data, 2, 3) is data and data == [1, 2, 3]\n"
        "assert apply_each(lambda x: x * 10, (1, 2)) == [10, 20]\n"
        "assert first_two(iter(range(5))) == [0, 1]\n"
        "assert named(max).__name__ == 'max' and named(max)(2, 9) == 9\n"
        "def check():\n    assert count == 2\nbump()\nbump()\ncheck()\n"  # module state, read in a test's function
    )
    result = run(program, tests, limits=FAST)
    assert result.passed, result.message


def test_a_program_that_dies_or_breaks_the_channel_mid_test_is_an_error_even_if_the_tests_catch_it():
    program = "import os\ndef f(x):\n    if x:\n        os._exit(0)\n    return 0\n"
    tests = "assert f(0) == 0\ntry:\n    f(1)\nexcept Exception:\n    pass\nassert True"
    result = run(program, tests, limits=FAST)
    assert (result.status, result.error_type) == ("error", "EarlyExit") and result.tests_line == 2
    garbage = (  # a frame that does not decode, on every descriptor: one of them is the channel
        "import os\ndef f():\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, b'\\x05\\x00\\x00\\x00Qxxxx')\n        except OSError:\n            pass\n    return 1\n"
    )
    assert not run(garbage, "try:\n    f()\nexcept BaseException:\n    pass", limits=FAST).passed


def test_an_answer_too_big_for_the_channel_is_an_error_in_the_test_that_asked():
    result = run("def f():\n    return 'x' * (20 << 20)\n", "assert f(), 'ran'", limits=Limits(memory_mb=512))
    assert (result.status, result.error_type, result.tests_line) == ("error", "OverflowError", 1)
    assert "does not fit the channel" in result.message


def test_stdin_setup_and_what_the_tests_print():
    program = "name = input()\nprint('hi ' + name)\ndef total():\n    return sum(data)\n"
    result = run(program, "print(total(), total() == 6)", limits=FAST, stdin="Ada\n", setup="data = [1, 2, 3]")
    assert result.passed and result.stdout == "hi Ada\n" and result.tests_stdout == "6 True\n"
    assert run("input()", limits=FAST).error_type == "EOFError"  # no stdin: input() has nothing to read
    many = [sandbox.Job("print(input())", stdin="x"), ("def f():\n    return 1\n", "assert f() == 1", "f")]
    assert [(r.status, r.stdout) for r in sandbox.run_many(many, limits=FAST, workers=2)] == [("passed", "x\n"), ("passed", "")]
