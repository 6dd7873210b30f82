"""The judge: runs the TESTS, in a process of its own that never holds the program's code, and reports
the verdict to the evaluator on a pipe the program has no end of.

The program's top-level names reach the tests as :class:`Proxy` objects (or as the plain values they
are); every call, attribute read and operator on a proxy is a request on the channel, answered with plain
data or another handle (see ``wire``). So what the tests compare is data of the judge's own making:
``f(1) == 2`` with an ``f`` that returns an object whose ``__eq__`` always says True compares a proxy with 2,
which is False, and an ``int`` subclass arrives as the int it encodes to.

Rules a reader of a verdict should know:
- A program's object never equals, nor orders against, a plain value; two of the program's objects
  compare as the program says (``Vector(1, 2) + Vector(3, 4) == Vector(4, 6)``).
- Before each top-level statement of the tests, the program's top-level names the tests mention anywhere
  are read again, so module state a function changed is seen; names that would shadow a builtin are not
  taken.
- A broken channel (the program died, answered garbage or too much) fails the run as an error even if the
  tests caught the exception; ``ProgramBroke`` is not an ``Exception``.

Standard library only (it runs as ``python -I -S``).
"""

from __future__ import annotations

import builtins
import marshal
import os
import sys

from cai_lightning.sandbox import wire

MESSAGE_CHARS = 500
JUDGE_MEMORY = 2 << 30  # bytes of address space: the tests' own data plus the program's answers
# What the program may ask of the judge's objects it was given (a lambda, an iterator): no attributes.
CALLBACK_OPERATIONS = {
    "iter": iter, "next": next, "len": len, "contains": lambda obj, item: item in obj,
    "getitem": lambda obj, key: obj[key], "repr": repr,
}


class ProgramBroke(BaseException):
    """The channel to the program failed: it exited, died, or sent something that is not a message.
    A BaseException, so that a test's ``except Exception`` cannot swallow it."""


class ProgramException(Exception):
    """Base of the judge's stand-ins for exceptions the program raised that are not ``Exception``s
    (``SystemExit``, ``KeyboardInterrupt``): in the tests they are ordinary errors."""


class Proxy:
    """An object that lives in the program. Attribute reads, calls and operators are requests."""

    __slots__ = ("_cai_end", "_cai_handle")

    def __init__(self, end: JudgeEnd, handle: int) -> None:
        object.__setattr__(self, "_cai_end", end)
        object.__setattr__(self, "_cai_handle", handle)

    def _cai_op(self, name: str, *args):
        return self._cai_end.request(("op", name, (self, *args)))

    def __getattr__(self, name):
        return self._cai_end.request(("getattr", self, name))

    def __setattr__(self, name, value):
        self._cai_end.request(("setattr", self, name, value))

    def __delattr__(self, name):
        self._cai_end.request(("delattr", self, name))

    def __call__(self, *args, **kwargs):
        return self._cai_end.request(("call", self, args, kwargs))

    def __hash__(self):  # the program's hash: equal objects of the program group together in a set
        return self._cai_op("hash")

    def __instancecheck__(self, instance):
        return self._cai_op("instancecheck", instance)

    def __subclasscheck__(self, subclass):
        return self._cai_op("subclasscheck", subclass)

    def __enter__(self):
        return self._cai_op("enter")

    def __exit__(self, *exc_info):
        return self._cai_op("exit", *exc_info)


def _compare(name: str):
    """A comparison the program answers only against another of its objects: never against plain data."""
    return lambda self, other: self._cai_op(name, other) if type(other) is Proxy else NotImplemented


def _forward(name: str, reflected: bool = False):
    if reflected:
        return lambda self, other: self._cai_end.request(("op", name, (other, self)))
    return lambda self, *args: self._cai_op(name, *args)


for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Proxy, f"__{_name}__", _compare(_name))
for _name in ("len", "iter", "next", "bool", "str", "repr", "contains", "getitem", "setitem", "delitem",
              "neg", "pos", "abs", "invert", "int", "float", "index", "round", "reversed", "format"):
    setattr(Proxy, f"__{_name}__", _forward(_name))
for _name in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift",
              "and", "or", "xor"):
    setattr(Proxy, f"__{_name}__", _forward(_name))
    setattr(Proxy, f"__r{_name}__", _forward(_name, reflected=True))
del _name


class JudgeEnd(wire.Endpoint):
    """The judge's end: the program's objects become proxies, its exception classes become real classes
    here (an ``except`` clause needs one), and the tests' own containers are shared by identity."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        super().__init__(read_fd, write_fd)
        self.proxies: dict[int, Proxy] = {}
        self.mirrors: dict[int, type] = {}  # handle -> the local class standing for a program's exception class
        self.mirrored: dict[type, int] = {}
        self.numbers: dict[int, int] = {}  # id(our object) -> number, for shared containers and exceptions
        self.exported: dict[int, object] = {}  # number -> our callable or iterator the program holds
        self.broken: ProgramBroke | None = None

    def request(self, message):
        if self.broken is not None:
            raise self.broken
        try:
            return super().request(message)
        except (wire.WireError, wire.ChannelClosed) as err:
            self.broken = ProgramBroke(f"{type(err).__name__}: {err}")
            raise self.broken from None

    def reference(self, value):
        if type(value) is Proxy:
            return wire.handle_bytes(value._cai_handle)
        if isinstance(value, type) and value in self.mirrored:
            return wire.handle_bytes(self.mirrored[value])
        remote = getattr(value, "_cai_remote", None) if type(value) in self.mirrored else None
        if type(remote) is Proxy:  # an exception of the program's class: the program's own instance
            return wire.handle_bytes(remote._cai_handle)
        return None

    def identity(self, value):
        number = self.numbers.get(id(value))
        if number is None:
            number = len(self.numbers) + 1
            self.numbers[id(value)] = number
            self.shared[number] = [value, b""]
        return number

    def export(self, value):
        number = self.numbers.get(id(value))
        if number is None:
            number = self.identity(value)
            self.exported[number] = value
        name = getattr(value, "__name__", None)
        return wire.judge_object_bytes(number, name if type(name) is str else type(value).__name__)

    def send(self, message):
        super().send(message)
        for number, (value, agreed) in self.shared.items():
            if not agreed and type(value) in wire.MUTABLE:
                self.agree(number)

    def on_handle(self, number, kind, name, base):
        if kind == wire.EXCEPTION_CLASS:
            if number not in self.mirrors:
                parent = self.exceptions.get(base, Exception)
                if not issubclass(parent, Exception):
                    parent = ProgramException
                cls = _mirror_class(self, name, parent)
                self.mirrors[number], self.mirrored[cls] = cls, number
            return self.mirrors[number]
        if number not in self.proxies:
            self.proxies[number] = Proxy(self, number)
        return self.proxies[number]

    def on_judge_object(self, number, name):
        if number not in self.exported:
            raise wire.WireError(f"the program named judge object {number}, which it was never given")
        return self.exported[number]

    def on_shared(self, number, value):
        entry = self.shared.get(number)
        if entry is None:
            raise wire.WireError(f"the program named shared object {number}, which it was never given")
        if type(entry[0]) in wire.MUTABLE and type(value) is type(entry[0]):
            wire.replace_contents(entry[0], value)
            self.agree(number)
        return entry[0]

    def perform(self, message):
        kind, body = message[0], message[1:-1]
        if kind == "call" and len(body) == 3 and _ours(self, body[0]):
            target, args, kwargs = body
            return target(*args, **kwargs)
        if kind == "op" and len(body) == 2 and body[0] in CALLBACK_OPERATIONS and type(body[1]) is tuple \
                and body[1] and _ours(self, body[1][0]):
            return CALLBACK_OPERATIONS[body[0]](*body[1])
        raise wire.WireError(f"the program asked the judge for {kind!r}, which it may not")

    def exception_payload(self, exc):
        cls = type(exc)
        if self.exceptions.get(cls.__name__) is cls:
            return (cls, wire._plain_args(exc), None)
        if cls in self.mirrored:
            return (cls, wire._plain_args(exc), exc)  # travels as the program's instance
        return (Exception, (f"{cls.__name__}: {exc}",), None)  # the tests' own exception classes stay here

    def exception_from(self, payload):
        if type(payload) is tuple and len(payload) == 3 and payload[0] in self.mirrored and type(payload[2]) is Proxy:
            cls, args, remote = payload
            if type(args) is not tuple:
                raise wire.WireError("a bad exception")
            exc = cls.__new__(cls)
            BaseException.__init__(exc, *args)
            exc._cai_remote = remote
            return exc
        exc = super().exception_from(payload)
        if not isinstance(exc, Exception):  # SystemExit and the like, raised by the program's code
            stand_in = type(type(exc).__name__, (ProgramException,), {"__module__": "__sandbox__"})
            exc = stand_in(*exc.args)
        return exc


def _mirror_class(end: JudgeEnd, name: str, parent: type) -> type:
    """The judge's stand-in for an exception class of the program: a real class (``except`` needs one)
    whose instances are bound to an instance in the program, for attributes and ``str``. Made by the
    tests, an instance is made in the program too, by calling the program's class."""

    def __init__(self, *args, **kwargs):
        remote = end.request(("call", type(self), args, kwargs))
        BaseException.__init__(self, *args)
        self._cai_remote = remote

    def __getattr__(self, attribute):
        remote = self.__dict__.get("_cai_remote")
        if remote is None or attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(remote, attribute)

    def __str__(self):
        remote = self.__dict__.get("_cai_remote")
        return str(remote) if remote is not None else parent.__str__(self)

    namespace = {"__module__": "__sandbox__", "__init__": __init__, "__getattr__": __getattr__, "__str__": __str__}
    return type(name, (parent,), namespace)


def _ours(end: JudgeEnd, value: object) -> bool:
    return end.exported.get(end.numbers.get(id(value))) is value


def main(config: dict) -> None:
    """The judge child's entry: wait for the program, run the tests statement by statement, report."""
    _die_with_parent(config["parent_pid"])
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (JUDGE_MEMORY, JUDGE_MEMORY))  # what a program's answers can make it hold
    report_fd, tests = config["report_fd"], config["tests"]

    def report(status, error_type="", message="", tests_line=0, layers=None):
        data = marshal.dumps({
            "status": status, "error_type": error_type, "message": message[:MESSAGE_CHARS],
            "tests_line": tests_line, "layers": layers or {},
        })
        while data:
            data = data[os.write(report_fd, data):]
        os._exit(0)

    import _ast

    try:
        tree = compile(tests, "<tests>", "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
        statements = [
            (node.lineno, compile(_ast.Module(body=[node], type_ignores=[]), "<tests>", "exec", dont_inherit=True))
            for node in tree.body
        ]
        used = tuple(sorted(set().union(*(_names_used(code) for _, code in statements))))
    except SyntaxError as exc:
        report(*_describe(exc, tests, exc.lineno), tests_line=exc.lineno or 0)
    end = JudgeEnd(config["read_fd"], config["write_fd"])
    try:
        hello = end.receive()
    except (wire.WireError, wire.ChannelClosed) as err:
        report("error", "EarlyExit", f"the program's process ended before it ran ({type(err).__name__}: {err})")
    layers = hello[-1] if type(hello[-1]) is dict else {}
    layers = {str(k): str(v) for k, v in layers.items()}
    if hello[0] == "failed" and len(hello) == 5 and hello[1] in ("failed", "error", "killed"):
        report(hello[1], str(hello[2]), str(hello[3]), layers=layers)
    if hello[0] != "ready" or len(hello) != 2:
        report("error", "ProtocolError", "the program's process did not start as the judge expects", layers=layers)

    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    given: dict[str, object] = {}  # the program's names as last put in the namespace
    for line, code in statements:
        try:
            names = end.request(("names", used))
            if type(names) is not dict:
                raise wire.WireError("names must be a dict")
            for name, value in names.items():
                if type(name) is str and namespace.get(name, given.get(name)) is given.get(name):
                    namespace[name] = given[name] = value
            exec(code, namespace)
        except BaseException as exc:
            if end.broken is not None and exc is end.broken:
                report("error", "EarlyExit", f"the program stopped answering at tests line {line}: {exc}",
                       tests_line=line, layers=layers)
            try:  # for a human reading stderr; a proxy's repr in it may need the (broken) channel
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            except BaseException:
                pass
            report(*_describe(exc, tests, line), tests_line=line, layers=layers)
    if end.broken is not None:
        report("error", "EarlyExit", f"the program stopped answering: {end.broken}", layers=layers)
    report("passed", layers=layers)


def _names_used(code) -> set[str]:
    """Every global name a statement's code can look up, in its nested functions and classes too."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_used(const)
    return names


def _describe(exc: BaseException, tests: str, line: int | None) -> tuple[str, str, str]:
    return wire.describe(exc, "tests", tests, line, MESSAGE_CHARS)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the evaluator dies, however it dies. (isolation.die_with_parent does the
    same for the program; loading that module here would cost the judge ~6 ms per run, measured.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, 9, 0, 0, 0) != 0 or os.getppid() != parent_pid:  # PR_SET_PDEATHSIG, SIGKILL
        os._exit(1)
