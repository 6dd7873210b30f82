"""The judge: runs the TESTS, in a process of its own that never holds the program's code, and reports
the verdict to the evaluator on a pipe the program has no end of.

The program's top-level names reach the tests as :class:`Proxy` objects (or as the plain values they
are); every call, attribute read and operator on a proxy is a request on the channel, answered with plain
data or another handle (see ``wire``). So what the tests compare is data of the judge's own making:
``f(1) == 2`` with an ``f`` that returns an object whose ``__eq__`` always says True compares a proxy with 2,
which is False, and an ``int`` subclass arrives as the int it encodes to.

Rules a reader of a verdict should know (the principle: the tests decide on plain values the judge holds
itself; a program's object never decides a verdict):
- Names are resolved here, from the tests' own code: a name the tests use comes from the program only
  while the tests have not bound it themselves (an assignment, ``def``, ``import``, ``global``: read from
  the source of the statements run so far), and never when it is one of the judge's builtins, except the
  problem's entry point (a function the task asks for may be called ``sum``). Those names are read again
  before each top-level statement, so module state a function changed is seen. An entry point the
  program does not define is a ``NameError`` verdict.
- A program's object (one not sent as plain data) never equals, orders against, nor computes with a
  plain value of the tests: an instance of a builtin container's subclass (``Counter``, ``OrderedDict``,
  a namedtuple) is replaced by the plain container it holds first, as Python compares them; any other
  is unequal, and arithmetic or ordering with it is a ``TypeError``. The tests' operand is never sent to
  the program's operator. Two of the program's objects compare and compute as the program says
  (``Vector(1, 2) + Vector(3, 4) == Vector(4, 6)``).
- A builtin applied to a program's object may call its method (``len(stack)``, ``str(error)``), and its
  answer must be a plain value of the builtin's own type: ``len`` an int, ``str`` a str, ``in`` and
  ``isinstance`` a bool (Python checks most; the judge checks the rest). A program's context manager
  never swallows a test's ``AssertionError``.
- A broken channel (the program died, answered garbage) fails the run as an error even if the tests
  caught the exception; ``ProgramBroke`` is not an ``Exception``. An answer over ``wire.MAX_REPLY``
  bytes fails it (``ReplyTooLarge``). The judge has the program's CPU limit and a memory limit of its own.

Standard library only (it runs as ``python -I -S``).

Why one long module: it is sent whole to the judge child on its stdin, where it can import nothing but the
standard library and ``wire``.
"""

from __future__ import annotations

import builtins
import marshal
import operator
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

    def __enter__(self):
        return self._cai_op("enter")


_NO_PLAIN = object()
SYMBOLS = {
    "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "add": "+", "sub": "-", "mul": "*",
    "matmul": "@", "truediv": "/", "floordiv": "//", "mod": "%", "pow": "**", "lshift": "<<", "rshift": ">>",
    "and": "&", "or": "|", "xor": "^",
}


def _plain(proxy: Proxy) -> object:
    """What a program's object is as plain data (a ``Counter``'s dict, a namedtuple's tuple), decoded by
    the judge; ``_NO_PLAIN`` for an object that is not an instance of a builtin container, or that the
    program computed from a value of the tests' (see :func:`_arithmetic`)."""
    if proxy._cai_handle in proxy._cai_end.derived:
        return _NO_PLAIN
    answer = proxy._cai_op("plain")
    if type(answer) is tuple and len(answer) == 1 and type(answer[0]) is not Proxy:
        return answer[0]
    return _NO_PLAIN


def _derived(end: JudgeEnd, answer: object, what: str) -> Proxy:
    """``answer``, an operation's result that the program computed from a value of the tests', marked so
    that no plain value is ever taken from it; a plain answer is a TypeError."""
    if type(answer) is not Proxy:
        raise TypeError(
            f"{what} answered with a plain {type(answer).__name__} computed from the tests' value: the judge "
            "takes plain answers to operators only from the program's own objects, never about the tests' values"
        )
    end.derived.add(answer._cai_handle)
    return answer


def _compare(name: str):
    """A comparison: between two of the program's objects, the program's; against the tests' value, on
    the object's plain value (never the object's method), else unequal and unordered."""
    compare = getattr(operator, name)

    def method(self, other):
        if type(other) is Proxy:
            return self._cai_op(name, other)
        value = _plain(self)
        return NotImplemented if value is _NO_PLAIN else compare(value, other)

    return method


def _arithmetic(name: str, reflected: bool = False):
    """A binary operator. With the tests' value: on the object's plain value when it has one; else the
    program's object computes it (``Vector(1, 2) * 3``) and must answer with another of its objects, which
    is *derived*: the judge never takes a plain value from it (``abs``, ``len``, ``bool``, ``str``,
    comparing with plain data), so a program told the tests' ``y`` in ``f(x) - y`` cannot answer ``0``.
    Between two of the program's objects: the program's answer, derived if either operand is."""
    compute = pow if name == "pow" else getattr(operator, f"{name}_" if name in ("and", "or") else name)

    def method(self, other):
        end = self._cai_end
        operands = (other, self) if reflected else (self, other)
        if type(other) is Proxy:
            answer = end.request(("op", name, operands))
            if self._cai_handle in end.derived or other._cai_handle in end.derived:
                return _derived(end, answer, f"'{SYMBOLS[name]}' of an object derived from the tests' value")
            return answer
        value = _plain(self)
        if value is not _NO_PLAIN and self._cai_handle not in end.derived:
            return compute(other, value) if reflected else compute(value, other)
        return _derived(end, end.request(("op", name, operands)), f"the program's '{SYMBOLS[name]}'")

    return method


def _forward(name: str, answer_type: type | None = None):
    """An operation the program's object answers itself (``len``, ``str``, ``in``, ``-v``): a plain answer
    only from an object not derived from the tests' values; with ``answer_type``, of that type (Python
    checks ``len``, ``str``, ``bool``, ``int``, ``float``, ``hash`` itself)."""
    def method(self, *args):
        answer = self._cai_op(name, *args)
        if self._cai_handle in self._cai_end.derived:
            return _derived(self._cai_end, answer, f"'{name}' of an object derived from the tests' value")
        if answer_type is not None and type(answer) is not answer_type:
            raise TypeError(f"the program's '{name}' answered a {type(answer).__name__}, not a {answer_type.__name__}")
        return answer

    return method


def _exit(self, exc_type, exc, traceback):
    """A program's context manager may swallow the program's exceptions, never a test's assertion."""
    answer = self._cai_op("exit", exc_type, exc, traceback)
    if answer is not None and type(answer) is not bool:
        raise TypeError(f"the program's '__exit__' answered a {type(answer).__name__}, not a bool")
    return answer and not isinstance(exc, AssertionError)


for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Proxy, f"__{_name}__", _compare(_name))
for _name in ("len", "iter", "next", "bool", "str", "repr", "getitem", "setitem", "delitem",
              "neg", "pos", "abs", "invert", "int", "float", "index", "round", "reversed", "format"):
    setattr(Proxy, f"__{_name}__", _forward(_name))
for _name in ("contains", "instancecheck", "subclasscheck"):
    setattr(Proxy, f"__{_name}__", _forward(_name, bool))
for _name in SYMBOLS:
    if _name not in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(Proxy, f"__{_name}__", _arithmetic(_name))
        setattr(Proxy, f"__r{_name}__", _arithmetic(_name, reflected=True))
Proxy.__exit__ = _exit
del _name


class JudgeEnd(wire.Endpoint):
    """The judge's end: the program's objects become proxies, its exception classes become real classes
    here (an ``except`` clause needs one), and the tests' own containers are shared by identity."""

    receive_limit = wire.MAX_REPLY

    def __init__(self, read_fd: int, write_fd: int) -> None:
        super().__init__(read_fd, write_fd)
        self.proxies: dict[int, Proxy] = {}
        self.mirrors: dict[int, type] = {}  # handle -> the local class standing for a program's exception class
        self.mirrored: dict[type, int] = {}
        self.numbers: dict[int, int] = {}  # id(our object) -> number, for shared containers and exceptions
        self.exported: dict[int, object] = {}  # number -> our callable or iterator the program holds
        self.broken: ProgramBroke | None = None
        self.broken_by: Exception | None = None  # what broke the channel
        self.derived: set[int] = set()  # handles of objects the program computed from the tests' values

    def request(self, message):
        if self.broken is not None:
            raise self.broken
        try:
            return super().request(message)
        except (wire.WireError, wire.ChannelClosed) as err:
            self.broken, self.broken_by = ProgramBroke(f"{type(err).__name__}: {err}"), err
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

    def on_handle(self, number, kind, name, base, module="", qualname=""):
        if kind == wire.EXCEPTION_CLASS:
            if number not in self.mirrors:
                parent = self.exceptions.get(base, Exception)
                if not issubclass(parent, Exception):
                    parent = ProgramException
                cls = _mirror_class(self, name, parent, module, qualname)
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
            # named as the builtin it stands for, so that a verdict names it `SystemExit`
            stand_in = type(type(exc).__name__, (ProgramException,), {"__module__": "builtins"})
            exc = stand_in(*exc.args)
        return exc


def _mirror_class(end: JudgeEnd, name: str, parent: type, module: str = "", qualname: str = "") -> type:
    """The judge's stand-in for an exception class of the program: a real class (``except`` needs one)
    whose instances are bound to an instance in the program, for attributes and ``str``. Made by the
    tests, an instance is made in the program too, by calling the program's class. It carries the class's
    module and qualified name as the program sent them (``re``, ``error``), for the verdict to name it."""

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

    namespace = {
        "__module__": module[:wire.QUALIFIED_CHARS] or "__sandbox__",
        "__qualname__": qualname[:wire.QUALIFIED_CHARS] or name,
        "__init__": __init__, "__getattr__": __getattr__, "__str__": __str__,
    }
    return type(name, (parent,), namespace)


def _ours(end: JudgeEnd, value: object) -> bool:
    return end.exported.get(end.numbers.get(id(value))) is value


def main(config: dict) -> None:
    """The judge child's entry: wait for the program, run the tests statement by statement, report."""
    _die_with_parent(config["parent_pid"])
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (JUDGE_MEMORY, JUDGE_MEMORY))  # what a program's answers can make it hold
    cpu_s = config["limits"]["cpu_s"]  # for the tests' own work and decoding the program's answers
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    report_fd, tests, entry_point = config["report_fd"], config["tests"], config.get("entry_point") or ""

    def report(status, error_type="", message="", tests_line=0, layers=None, error_qualname=""):
        data = marshal.dumps({
            "status": status, "error_type": error_type, "message": message[:MESSAGE_CHARS],
            "tests_line": tests_line, "layers": layers or {}, "error_qualname": error_qualname[:wire.QUALIFIED_CHARS],
        })
        while data:
            data = data[os.write(report_fd, data):]
        os._exit(0)

    def report_broken(broken_by, line, layers):
        if isinstance(broken_by, wire.FrameTooLarge):
            report("failed", "ReplyTooLarge", f"the program sent an answer of {broken_by.size:,} bytes; the judge "
                   f"reads at most {broken_by.limit:,} bytes in one answer", tests_line=line, layers=layers)
        where = f" at tests line {line}" if line else ""
        report("error", "EarlyExit", f"the program stopped answering{where}: {type(broken_by).__name__}: {broken_by}",
               tests_line=line, layers=layers)

    import _ast

    try:
        tree = compile(tests, "<tests>", "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
        statements = [
            (node.lineno, compile(_ast.Module(body=[node], type_ignores=[]), "<tests>", "exec", dont_inherit=True))
            for node in tree.body
        ]
    except SyntaxError as exc:
        report(*_describe(exc, tests, exc.lineno), tests_line=exc.lineno or 0, error_qualname="SyntaxError")
    asked = _names_to_ask(tree.body, [code for _, code in statements], entry_point)
    end = JudgeEnd(config["read_fd"], config["write_fd"])
    try:
        hello = end.receive()
    except wire.FrameTooLarge as err:
        report_broken(err, 0, {})
    except (wire.WireError, wire.ChannelClosed) as err:
        report("error", "EarlyExit", f"the program's process ended before it ran ({type(err).__name__}: {err})")
    layers = hello[-1] if type(hello[-1]) is dict else {}
    layers = {str(k): str(v) for k, v in layers.items()}
    if hello[0] == "failed" and len(hello) == 6 and hello[1] in ("failed", "error", "killed"):
        report(hello[1], str(hello[2]), str(hello[3]), layers=layers, error_qualname=str(hello[4]))
    if hello[0] != "ready" or len(hello) != 2:
        report("error", "ProtocolError", "the program's process did not start as the judge expects", layers=layers)

    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    for (line, code), wanted in zip(statements, asked):
        try:
            names = end.request(("names", wanted)) if wanted else {}
            if type(names) is not dict:
                raise wire.WireError("names must be a dict")
            if entry_point in wanted and entry_point not in names:
                report("error", "NameError", f"the program does not define {entry_point!r}, the name the tests call",
                       layers=layers, error_qualname="NameError")
            for name in wanted:  # only the names asked for: the program cannot add one
                if name in names:
                    namespace[name] = names[name]
                else:
                    namespace.pop(name, None)
            exec(code, namespace)
        except BaseException as exc:
            if end.broken is not None and exc is end.broken:
                report_broken(end.broken_by, line, layers)
            try:  # for a human reading stderr; a proxy's repr in it may need the (broken) channel
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            except BaseException:
                pass
            report(*_describe(exc, tests, line), tests_line=line, layers=layers,
                   error_qualname=wire.qualified_name(type(exc)))
    if end.broken is not None:
        report_broken(end.broken_by, 0, layers)
    report("passed", layers=layers)


def _names_to_ask(body: list, codes: list, entry_point: str) -> list[tuple[str, ...]]:
    """For each top-level statement of the tests, the names to take from the program just before it runs:
    the names the tests use anywhere (and the entry point) that no statement before it has bound, less
    the judge's builtins (but for the entry point) and dunders. Decided from the tests' code alone."""
    used = set().union(*(_names_used(code) for code in codes)) | ({entry_point} if entry_point else set())
    used = {
        name for name in used
        if (name == entry_point or not hasattr(builtins, name)) and not (name.startswith("__") and name.endswith("__"))
    }
    asked, bound = [], set()
    for node in body:
        asked.append(tuple(sorted(used - bound)))
        bound |= _names_bound(node)
    return asked


def _names_used(code) -> set[str]:
    """Every global name a statement's code can look up, in its nested functions and classes too."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_used(const)
    return names


_SCOPES = ("FunctionDef", "AsyncFunctionDef", "ClassDef", "Lambda")
_COMPREHENSIONS = ("ListComp", "SetComp", "DictComp", "GeneratorExp")


def _names_bound(statement) -> set[str]:
    """The module-level names a top-level statement of the tests can bind: assignment and ``del`` targets,
    ``for`` / ``with`` / ``except`` / ``match`` names, walruses, ``def`` and ``class`` names, imports (a
    star import: the module's public names), and names a nested function declares ``global``. Names
    local to a function, class body or comprehension are not. A loop over the syntax tree, no recursion."""
    names: set[str] = set()
    todo = [(statement, "module")]  # (node, the scope it is in: "module", "comprehension" or "inner")
    while todo:
        node, scope = todo.pop()
        kind = type(node).__name__
        if kind == "Global":
            names.update(node.names)
        elif kind == "NamedExpr" and scope != "inner":  # a walrus in a comprehension binds outside it
            names.add(node.target.id)
        elif scope == "module":
            if kind == "Name" and type(node.ctx).__name__ in ("Store", "Del"):
                names.add(node.id)
            elif kind in ("FunctionDef", "AsyncFunctionDef", "ClassDef"):
                names.add(node.name)
            elif kind in ("ExceptHandler", "MatchAs", "MatchStar") and node.name:
                names.add(node.name)
            elif kind == "MatchMapping" and node.rest:
                names.add(node.rest)
            elif kind == "Import":
                names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
            elif kind == "ImportFrom":
                names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
                if any(alias.name == "*" for alias in node.names) and not node.level:
                    names.update(_public_names(node.module))
        if kind in _SCOPES:  # decorators, defaults and bases are in the enclosing scope; the body is not
            body = node.body if type(node.body) is list else [node.body]
            todo.extend((child, "inner" if any(child is b for b in body) else scope) for child in _children(node))
        else:
            inside = "comprehension" if kind in _COMPREHENSIONS and scope == "module" else scope
            todo.extend((child, inside) for child in _children(node))
    return names


def _children(node) -> list:
    children = []
    for field in node._fields:
        value = getattr(node, field, None)
        if type(value) is list:
            children.extend(item for item in value if hasattr(item, "_fields"))
        elif hasattr(value, "_fields"):
            children.append(value)
    return children


def _public_names(module: str) -> list[str]:
    """The names ``from module import *`` binds; none when it cannot be imported (then the statement fails)."""
    try:
        import importlib

        found = vars(importlib.import_module(module))
    except BaseException:
        return []
    return [name for name in found.get("__all__", found) if type(name) is str and not name.startswith("_")]


def _describe(exc: BaseException, tests: str, line: int | None) -> tuple[str, str, str]:
    return wire.describe(exc, "tests", tests, line, MESSAGE_CHARS)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the evaluator dies, however it dies. (isolation.die_with_parent does the
    same for the program; loading that module here would cost the judge ~6 ms per run, measured.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, 9, 0, 0, 0) != 0 or os.getppid() != parent_pid:  # PR_SET_PDEATHSIG, SIGKILL
        os._exit(1)
