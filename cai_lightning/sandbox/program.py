"""The program's side: runs in the program child, after :func:`~cai_lightning.sandbox.isolation.isolate`
has locked the process in. Executes the model's program as module ``__sandbox__`` (also ``__main__``, so an
``if __name__ == "__main__":`` block does not run), tells the judge it is ready, then answers the judge's
requests on its objects until the judge closes the channel.

Nothing here is trusted. The program shares this interpreter and may replace any of it; all it can gain is
to send other bytes, which the judge decodes as plain data or handles (see ``wire``). Standard library only.
"""

from __future__ import annotations

import operator
import os
import sys
import types

from cai_lightning.sandbox import wire

MESSAGE_CHARS = 500
# What the judge may ask of an object here, besides calls and attributes: the operators a test can write.
OPERATIONS = {
    "len": len, "iter": iter, "next": next, "bool": bool, "str": str, "repr": repr, "format": format,
    "contains": operator.contains, "getitem": operator.getitem, "setitem": operator.setitem,
    "delitem": operator.delitem, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge, "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "matmul": operator.matmul, "truediv": operator.truediv, "floordiv": operator.floordiv,
    "mod": operator.mod, "pow": pow, "lshift": operator.lshift, "rshift": operator.rshift,
    "and": operator.and_, "or": operator.or_, "xor": operator.xor, "neg": operator.neg, "pos": operator.pos,
    "abs": abs, "invert": operator.invert, "int": int, "float": float, "index": operator.index,
    "round": round, "reversed": reversed, "hash": hash,
    "instancecheck": lambda cls, obj: isinstance(obj, cls), "subclasscheck": lambda cls, sub: issubclass(sub, cls),
    "enter": lambda obj: obj.__enter__(), "exit": lambda obj, *args: obj.__exit__(*args),
    "plain": lambda obj: plain_value(obj),
}
# The builtin containers an object of the program may be an instance of (a Counter, an OrderedDict, a
# namedtuple), each with the base type's own copy: what the object is as plain data.
PLAIN_COPIES = (
    (dict, dict.copy), (list, list.copy), (tuple, lambda obj: tuple.__getitem__(obj, slice(None))),
    (set, set.copy), (frozenset, frozenset.copy), (bytearray, bytearray.copy),
)


def plain_value(obj: object) -> tuple:
    """``(value,)``: the plain container an instance of a builtin container's subclass holds, which the
    judge compares and computes with in its place (``Counter(a=1) == {"a": 1}``, as in Python); ``()``
    for any other object. (The subclasses of ``int``, ``float``, ``str``, ``bytes`` travel as plain values
    already.)"""
    for base, copy in PLAIN_COPIES:
        if isinstance(obj, base):
            return (copy(obj),)
    return ()


class JudgeObject:
    """A callable or iterator of the judge's (a test's lambda, ``iter(range(4))``), as the program sees
    it: calling or iterating it asks the judge. Its name is there for ``functools.wraps``."""

    def __init__(self, end: ProgramEnd, number: int, name: str) -> None:
        self._cai_end, self._cai_number = end, number
        self.__name__ = self.__qualname__ = name
        self.__doc__ = None

    def __call__(self, *args, **kwargs):
        return self._cai_end.request(("call", self, args, kwargs))

    def __iter__(self):
        return self._cai_end.request(("op", "iter", (self,)))

    def __next__(self):
        return self._cai_end.request(("op", "next", (self,)))

    def __len__(self):
        return self._cai_end.request(("op", "len", (self,)))

    def __contains__(self, item):
        return self._cai_end.request(("op", "contains", (self, item)))

    def __getitem__(self, key):
        return self._cai_end.request(("op", "getitem", (self, key)))

    def __repr__(self):
        return self._cai_end.request(("op", "repr", (self,)))


class ProgramEnd(wire.Endpoint):
    """The program's end of the channel: its objects travel as handles, kept alive in a table."""

    send_limit = wire.MAX_REPLY  # what the judge reads: a bigger answer is an OverflowError in the test

    def __init__(self, read_fd: int, write_fd: int, namespace: dict) -> None:
        super().__init__(read_fd, write_fd)
        self.namespace = namespace
        self.objects: dict[int, object] = {}  # handle -> object
        self.handles: dict[int, int] = {}  # id(object) -> handle
        self.stubs: dict[int, JudgeObject] = {}
        self.numbers: dict[int, int] = {}  # id(shared container) -> its number (the judge's)

    def identity(self, value):
        return self.numbers.get(id(value), 0)

    def export(self, value):
        if type(value) is JudgeObject:
            return wire.judge_object_bytes(value._cai_number, value.__name__)
        handle = self.handles.get(id(value))
        if handle is None:
            handle = len(self.objects) + 1
            self.objects[handle], self.handles[id(value)] = value, handle
        if isinstance(value, type) and issubclass(value, BaseException):
            base = next(c.__name__ for c in value.__mro__ if self.exceptions.get(c.__name__) is c)
            return wire.handle_bytes(handle, wire.EXCEPTION_CLASS, value.__name__, base, *wire.class_names(value))
        return wire.handle_bytes(handle, wire.CLASS if isinstance(value, type) else wire.OBJECT)

    def on_handle(self, number, kind, name, base, module="", qualname=""):
        if number not in self.objects:
            raise wire.WireError(f"no object {number}")
        return self.objects[number]

    def on_judge_object(self, number, name):
        if number not in self.stubs:
            self.stubs[number] = JudgeObject(self, number, name)
        return self.stubs[number]

    def on_shared(self, number, value):
        entry = self.shared.get(number)
        if entry is None:
            self.shared[number] = [value, b""]
            self.numbers[id(value)] = number
        elif type(entry[0]) in wire.MUTABLE and type(value) is type(entry[0]):
            wire.replace_contents(entry[0], value)
        self.agree(number)
        return self.shared[number][0]

    def perform(self, message):
        kind, body = message[0], message[1:-1]
        if kind == "call" and len(body) == 3:
            target, args, kwargs = body
            return target(*args, **kwargs)
        if kind == "getattr" and len(body) == 2:
            return getattr(*body)
        if kind == "setattr" and len(body) == 3:
            return setattr(*body)
        if kind == "delattr" and len(body) == 2:
            return delattr(*body)
        if kind == "op" and len(body) == 2 and body[0] in OPERATIONS and type(body[1]) is tuple:
            return OPERATIONS[body[0]](*body[1])
        if kind == "names" and len(body) == 1 and type(body[0]) is tuple:
            return self.names(body[0])
        raise wire.WireError(f"unexpected request {kind!r}")

    def names(self, wanted: tuple) -> dict:
        """Those of the ``wanted`` top-level names the program has. Which names the tests take from the
        program is the judge's decision, not this end's."""
        return {name: self.namespace[name] for name in wanted if type(name) is str and name in self.namespace}


def main(config: dict) -> None:
    """The program child's entry: isolate, run the program, serve the judge. Never returns."""
    from cai_lightning.sandbox import isolation

    layers: dict[str, str] = {}
    module = types.ModuleType("__sandbox__")
    namespace = module.__dict__
    end = ProgramEnd(config["read_fd"], config["write_fd"], namespace)
    try:
        isolation.isolate(config, layers)
    except BaseException as exc:  # nothing untrusted has run yet
        message = f"sandbox setup failed: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
        end.send(("failed", "error", "SandboxError", message, layers))
        os._exit(0)
    program, stdin, setup = config["program"], config.get("stdin", ""), config.get("setup", "")
    del config
    sys.modules["__main__"] = sys.modules["__sandbox__"] = module
    sys.argv = ["__sandbox__"]
    if stdin:
        import io

        sys.stdin = io.StringIO(stdin)
    reserve = bytearray(1 << 20)  # freed on failure, so that telling of a MemoryError has room
    try:
        if setup:
            exec(compile(setup, "<setup>", "exec", dont_inherit=True), namespace)
        exec(compile(program, "<program>", "exec", dont_inherit=True), namespace)
    except BaseException as exc:
        del reserve
        line = _program_line(exc)
        status, error_type, message = wire.describe(exc, "program", program, line, MESSAGE_CHARS)
        try:  # for a human reading stderr
            sys.__excepthook__(type(exc), exc, exc.__traceback__)
        except BaseException:
            pass
        end.send(("failed", status, error_type, message, wire.qualified_name(type(exc)), layers))
        os._exit(0)
    end.send(("ready", layers))
    try:
        while True:
            end.answer(end.receive())
    except (wire.ChannelClosed, wire.WireError):
        pass
    os._exit(0)


def _program_line(exc: BaseException) -> int | None:
    """The line of the program's top level that was running: its outermost frame in the traceback."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            return tb.tb_lineno
        tb = tb.tb_next
    return None
