"""The channel between the judge and the program: two pipes carrying length-prefixed frames of a small
tagged format for plain data, and the rules both ends follow. Standard library only: it runs in both
children (see ``cai_lightning.sandbox``), and in the parent for tests.

What a frame can hold (anything else is a :class:`WireError`, never an object built by the sender):

====================  ==================================================================================
None, bool, int,       by value; an ``int`` or ``str`` subclass arrives as the plain value it encodes to,
float, complex, str,   whatever its ``__eq__`` says
bytes, range
tuple, frozenset       by value
list, dict, set,       by value, plus an identity number when the JUDGE made it: the program works on a
bytearray              real copy, and both ends keep such shared containers in step at every message (copy
                       in, copy back), so a test that hands a list to ``push_all`` sees what was pushed
builtin exception      by name (``ValueError``); instances as class + args
classes / instances
builtin functions      by name (``len``, ``max``, ``sorted``, ``int``): each end uses its own
and types
a handle               ``h`` + number: an object that lives in the PROGRAM (a function, a class, an
                       instance). The judge holds a :class:`~cai_lightning.sandbox.judge.Proxy`; calls,
                       attribute reads and operators on it are requests on the channel
a judge object         ``j`` + number + name: a callable or iterator that lives in the JUDGE (a test's
                       lambda given to a decorator, ``iter(range(4))``). The program may only call or
                       iterate it
====================  ==================================================================================

The decoder checks lengths against the frame, nesting against :data:`MAX_DEPTH`, and that dict keys and set
members are hashable plain values; a frame over :data:`MAX_FRAME` bytes is refused before it is read.

Why one long module: both children receive it as one file on their stdin (standard library only, no package to
import from), and the encoder and the decoder stay side by side so that what one end writes is what the other
reads.
"""

from __future__ import annotations

import os
import struct
import sys

MAX_FRAME = 16 << 20  # bytes in one message; a bigger answer is an error, not a pass
# Bytes in one message to the judge, whose work decoding is. Measured on one core: 2 MiB of the costliest
# values (a list of 420k empty frozensets) takes ~0.85 s of its CPU and ~90 MiB, well under its 2 GiB; a
# list of 2 MiB of small ints (~350k) fits.
MAX_REPLY = 2 << 20
MAX_DEPTH = 100  # nesting of containers; deeper values travel as handles
_DOUBLE = struct.Struct("<d")
_COMPLEX = struct.Struct("<dd")
_U32 = struct.Struct("<I")

NONE, TRUE, FALSE, INT, FLOAT, COMPLEX, STR, BYTES, RANGE = b"N", b"T", b"F", b"i", b"f", b"z", b"s", b"b", b"r"
TUPLE, FROZENSET, LIST, DICT, SET, BYTEARRAY = b"t", b"Z", b"L", b"D", b"S", b"B"
EXC_CLASS, EXC, HANDLE, JUDGE_OBJECT, BUILTIN = b"E", b"X", b"h", b"j", b"n"
# The kinds of handle, so the judge can mirror what Python needs as a real class (an `except` clause).
OBJECT, CLASS, EXCEPTION_CLASS = b"o", b"c", b"e"
MUTABLE = {list: LIST, dict: DICT, set: SET, bytearray: BYTEARRAY}


def builtin_exceptions() -> dict[str, type]:
    """Builtin exception classes by name: the only exception classes that travel by name."""
    import builtins

    return {
        name: value for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }


# Builtins that never travel by name: each would hand the receiver's interpreter to the sender's choice
# (a program answering `exec` for the tests to call); as values they are handles or judge objects.
NOT_BY_NAME = frozenset({
    "exec", "eval", "compile", "open", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "breakpoint", "input", "help", "exit", "quit", "copyright", "credits", "license",
})


def builtin_callables() -> dict[int, str]:
    """id() of each builtin function and type that travels by name (``len``, ``sorted``, ``int``) -> its name."""
    import builtins

    kinds = (type(len), type)
    return {
        id(v): k for k, v in vars(builtins).items()
        if isinstance(v, kinds) and not k.startswith("_") and k not in NOT_BY_NAME
    }


class WireError(Exception):
    """The other end sent something that is not a valid message."""


class FrameTooLarge(WireError):
    """The other end announced a message over the receiver's limit; it is refused before it is read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a message of {size:,} bytes, over the limit of {limit:,}")
        self.size, self.limit = size, limit


class ChannelClosed(Exception):
    """The other end closed its pipe (it exited or died)."""


class Endpoint:
    """One end of the channel: framing, the codec, and the shared containers kept in step.

    Subclasses decide what an object that is not plain data becomes (:meth:`export`, :meth:`reference`)
    and what a handle or judge object received becomes (:meth:`on_handle`, :meth:`on_judge_object`).
    """

    send_limit = MAX_FRAME  # the largest message this end sends (a bigger answer is the asker's exception)
    receive_limit = MAX_FRAME  # the largest it reads (a bigger one is refused before it is read)

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.exceptions = builtin_exceptions()
        self.builtins = builtin_callables()
        # Shared containers by identity number: the object, and its contents' encoding as last agreed.
        self.shared: dict[int, list] = {}

    # -- what subclasses decide ------------------------------------------------------------------

    def reference(self, value: object) -> bytes | None:
        """A reference to send instead of ``value``'s contents (a proxy, a shared container), or None."""
        return None

    def identity(self, value: object) -> int:
        """The identity number a mutable container or exception travels with (0: none, a copy)."""
        return 0

    def export(self, value: object) -> bytes:
        """How a value that is not plain data travels."""
        raise WireError(f"cannot send a {type(value).__name__}")

    def on_handle(self, number: int, kind: bytes, name: str, base: str, module: str = "", qualname: str = "") -> object:
        """What a handle received becomes; an exception class's carries its ``__name__``, its nearest builtin
        base, its ``__module__`` and its ``__qualname__`` (empty for other kinds)."""
        raise WireError("unexpected handle")

    def on_judge_object(self, number: int, name: str) -> object:
        raise WireError("unexpected judge object")

    def on_shared(self, number: int, value: object) -> object:
        """A shared container or exception arrived with its identity number, and ``value`` is what was
        decoded: the object to use for it (ours, updated in place to ``value``'s contents)."""
        raise WireError("unexpected shared container")

    # -- framing ---------------------------------------------------------------------------------

    def send(self, message: tuple) -> None:
        data = self.encode(message)
        if len(data) > self.send_limit:
            raise FrameTooLarge(len(data), self.send_limit)
        view = memoryview(_U32.pack(len(data)) + data)
        try:
            while view:
                view = view[os.write(self.write_fd, view):]
        except BrokenPipeError as err:
            raise ChannelClosed("the other end closed the channel") from err

    def receive(self) -> tuple:
        (size,) = _U32.unpack(self._read_exactly(4))
        if size > self.receive_limit:
            raise FrameTooLarge(size, self.receive_limit)
        message = self.decode(self._read_exactly(size))
        if type(message) is not tuple or not message or type(message[0]) is not str:
            raise WireError("a message must be a tuple starting with its kind")
        return message

    def _read_exactly(self, size: int) -> bytes:
        parts, missing = [], size
        while missing:
            chunk = os.read(self.read_fd, min(missing, 1 << 20))
            if not chunk:
                raise ChannelClosed("the other end closed the channel")
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    # -- requests and answers (the same on both ends: either may call the other while it waits) -----

    def request(self, message: tuple) -> object:
        """Send a request and wait for its answer, serving the other end's requests meanwhile (a test's
        lambda the program calls back while the judge waits on the call that received it)."""
        self.send(message + (self.changed_shared(),))
        while True:
            reply = self.receive()
            if reply[0] == "result" and len(reply) == 3:
                return reply[1]
            if reply[0] == "raise" and len(reply) == 3:
                raise self.exception_from(reply[1])
            self.answer(reply)

    def answer(self, message: tuple) -> None:
        """Perform one request of the other end and send the result, or the exception it raised."""
        try:
            value = self.perform(message)
        except (WireError, ChannelClosed):
            raise
        except BaseException as exc:  # the program's own exceptions, SystemExit included, are answers
            self.send(("raise", self.exception_payload(exc), self.changed_shared()))
            return
        try:
            self.send(("result", value, self.changed_shared()))
        except WireError as err:  # an answer too big for one message is the caller's exception
            self.send(("raise", (OverflowError, (f"the answer does not fit the channel: {err}",), None), []))

    def perform(self, message: tuple) -> object:
        raise WireError(f"unexpected request {message[0]!r}")

    def exception_payload(self, exc: BaseException) -> tuple:
        """How an exception raised while answering travels: (its class, its args, the instance itself
        when it is not a builtin exception, as a handle or judge object, else None)."""
        builtin = self.exceptions.get(type(exc).__name__) is type(exc)
        return (type(exc), _plain_args(exc), None if builtin else exc)

    def exception_from(self, payload: object) -> BaseException:
        if type(payload) is not tuple or len(payload) != 3 or type(payload[1]) is not tuple:
            raise WireError("a bad exception")
        cls, args, instance = payload
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise WireError("a bad exception class")
        return instance if isinstance(instance, cls) else _exception(cls, args)

    # -- shared containers -----------------------------------------------------------------------

    def changed_shared(self) -> list:
        """The shared containers changed since the two ends last agreed on them, to send along with the
        next message (each travels with its number, and the receiver updates its own in place). A
        container that only this table still holds cannot have changed and is skipped."""
        changes = []
        for entry in self.shared.values():
            value = entry[0]
            if type(value) not in MUTABLE or _refcount(value) <= 3:  # the table, `value`, the call's argument
                continue
            encoded = self.encode(value)
            if encoded != entry[1]:
                entry[1] = encoded
                changes.append(value)
        return changes

    def agree(self, number: int) -> None:
        """Record a shared container's contents as both ends now have them."""
        entry = self.shared[number]
        if type(entry[0]) in MUTABLE:
            entry[1] = self.encode(entry[0])

    # -- the codec -------------------------------------------------------------------------------

    def encode(self, value: object) -> bytes:
        out: list[bytes] = []
        self._put(value, out, 0)
        return b"".join(out)

    def _put(self, value: object, out: list, depth: int) -> None:
        ref = self.reference(value)
        if ref is not None:
            out.append(ref)
            return
        kind = type(value)
        if value is None:
            out.append(NONE)
        elif kind is bool:
            out.append(TRUE if value else FALSE)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = int.__index__(value)
            raw = number.to_bytes((number.bit_length() + 8) // 8, "little", signed=True)
            out += (INT, _U32.pack(len(raw)), raw)
        elif isinstance(value, float):
            out += (FLOAT, _DOUBLE.pack(float.__float__(value)))
        elif isinstance(value, complex):
            out += (COMPLEX, _COMPLEX.pack(complex.__getattribute__(value, "real"), complex.__getattribute__(value, "imag")))
        elif isinstance(value, str):
            raw = str.encode(str.__str__(value), "utf-8", "surrogatepass")
            out += (STR, _U32.pack(len(raw)), raw)
        elif isinstance(value, bytes):
            raw = bytes(memoryview(value))
            out += (BYTES, _U32.pack(len(raw)), raw)
        elif kind is range:
            out.append(RANGE)
            for part in (value.start, value.stop, value.step):
                self._put(part, out, depth + 1)
        elif depth >= MAX_DEPTH:
            out.append(self.export(value))
        elif kind in (tuple, frozenset):
            out += (TUPLE if kind is tuple else FROZENSET, _U32.pack(len(value)))
            for item in value:
                self._put(item, out, depth + 1)
        elif kind in MUTABLE:
            out += (MUTABLE[kind], _U32.pack(self.identity(value)))
            if kind is bytearray:
                out += (_U32.pack(len(value)), bytes(value))
            elif kind is dict:
                out.append(_U32.pack(len(value)))
                for key, item in list(value.items()):
                    self._put(key, out, depth + 1)
                    self._put(item, out, depth + 1)
            else:
                items = list(value)
                out.append(_U32.pack(len(items)))
                for item in items:
                    self._put(item, out, depth + 1)
        elif isinstance(value, type) and self.exceptions.get(value.__name__) is value:
            out += (EXC_CLASS, self._text(value.__name__))
        elif id(value) in self.builtins:
            out += (BUILTIN, self._text(self.builtins[id(value)]))
        elif isinstance(value, BaseException) and self.exceptions.get(type(value).__name__) is type(value):
            out += (EXC, _U32.pack(self.identity(value)))
            self._put(type(value), out, depth + 1)
            self._put(_plain_args(value), out, depth + 1)
        else:
            out.append(self.export(value))

    @staticmethod
    def _text(text: str) -> bytes:
        raw = text.encode("utf-8", "surrogatepass")
        return _U32.pack(len(raw)) + raw

    def decode(self, data: bytes) -> object:
        reader = _Reader(data)
        value = self._get(reader, 0)
        if reader.position != len(data):
            raise WireError("trailing bytes after a message")
        return value

    def _get(self, reader: _Reader, depth: int) -> object:
        if depth > MAX_DEPTH + 1:
            raise WireError("nested too deep")
        tag = reader.take(1)
        if tag == NONE:
            return None
        if tag == TRUE:
            return True
        if tag == FALSE:
            return False
        if tag == INT:
            return int.from_bytes(reader.take(reader.count()), "little", signed=True)
        if tag == FLOAT:
            return _DOUBLE.unpack(reader.take(8))[0]
        if tag == COMPLEX:
            return complex(*_COMPLEX.unpack(reader.take(16)))
        if tag == STR:
            return reader.text()
        if tag == BYTES:
            return reader.take(reader.count())
        if tag == RANGE:
            parts = [self._get(reader, depth + 1) for _ in range(3)]
            if any(type(p) is not int for p in parts) or parts[2] == 0:
                raise WireError("a bad range")
            return range(*parts)
        if tag in (TUPLE, FROZENSET):
            items = [self._get(reader, depth + 1) for _ in range(reader.count())]
            return tuple(items) if tag == TUPLE else frozenset(_hashable(items))
        if tag in (LIST, DICT, SET, BYTEARRAY):
            number = reader.count()
            if tag == BYTEARRAY:
                value: object = bytearray(reader.take(reader.count()))
            elif tag == DICT:
                pairs = [(self._get(reader, depth + 1), self._get(reader, depth + 1)) for _ in range(reader.count())]
                value = dict(zip(_hashable([k for k, _ in pairs]), [v for _, v in pairs]))
            else:
                items = [self._get(reader, depth + 1) for _ in range(reader.count())]
                value = items if tag == LIST else set(_hashable(items))
            return self.on_shared(number, value) if number else value
        if tag == EXC_CLASS:
            name = reader.text()
            if name not in self.exceptions:
                raise WireError(f"{name!r} is not a builtin exception")
            return self.exceptions[name]
        if tag == EXC:
            number = reader.count()
            cls, args = self._get(reader, depth + 1), self._get(reader, depth + 1)
            if not (isinstance(cls, type) and issubclass(cls, BaseException)) or type(args) is not tuple:
                raise WireError("a bad exception")
            value = _exception(cls, args)
            return self.on_shared(number, value) if number else value
        if tag == HANDLE:
            number, kind = reader.count(), reader.take(1)
            name = base = module = qualname = ""
            if kind == EXCEPTION_CLASS:
                name, base, module, qualname = reader.text(), reader.text(), reader.text(), reader.text()
            elif kind not in (OBJECT, CLASS):
                raise WireError("a bad handle kind")
            return self.on_handle(number, kind, name, base, module, qualname)
        if tag == JUDGE_OBJECT:
            return self.on_judge_object(reader.count(), reader.text())
        if tag == BUILTIN:
            import builtins

            name = reader.text()
            value = getattr(builtins, name, None) if not name.startswith("_") else None
            if id(value) not in self.builtins:
                raise WireError(f"{name!r} is not a builtin")
            return value
        raise WireError(f"unknown tag {tag!r}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > len(self.data):
            raise WireError("a message cut short")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def count(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def text(self) -> str:
        try:
            return self.take(self.count()).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as err:
            raise WireError("text that is not UTF-8") from err


def handle_bytes(
    number: int, kind: bytes = OBJECT, name: str = "", base: str = "", module: str = "", qualname: str = "",
) -> bytes:
    """A handle as it travels; an exception class carries its name, its nearest builtin base, and its module
    and qualified name (so that a verdict can name ``json.decoder.JSONDecodeError``, not ``JSONDecodeError``)."""
    out = HANDLE + _U32.pack(number) + kind
    if kind == EXCEPTION_CLASS:
        out += Endpoint._text(name) + Endpoint._text(base) + Endpoint._text(module) + Endpoint._text(qualname)
    return out


def judge_object_bytes(number: int, name: str = "") -> bytes:
    return JUDGE_OBJECT + _U32.pack(number) + Endpoint._text(name)


def _hashable(items: list) -> list:
    for item in items:
        try:
            hash(item)
        except TypeError as err:
            raise WireError("an unhashable dict key or set member") from err
    return items


def _exception(cls: type, args: tuple) -> BaseException:
    try:
        return cls(*args)
    except Exception:  # a class whose __init__ wants other arguments
        exc = cls.__new__(cls)
        exc.args = args
        return exc


def _plain_args(exc: BaseException) -> tuple:
    """An exception's args if they are plain data, else its message alone."""
    args = BaseException.__getattribute__(exc, "args")
    if all(type(a) in (str, int, float, bool, type(None)) for a in args):
        return tuple(args)
    try:
        return (str(exc),)
    except Exception:
        return ()


def replace_contents(target, contents) -> None:
    """Make the container ``target`` hold what ``contents`` (of the same type) holds, in place."""
    if type(target) is list or type(target) is bytearray:
        target[:] = contents
    else:
        target.clear()
        target.update(contents)


def _refcount(value) -> int:
    return sys.getrefcount(value)


QUALIFIED_CHARS = 200  # a class's module and qualified name are the program's to choose: kept short


def class_names(cls: type) -> tuple[str, str]:
    """An exception class's ``__module__`` and ``__qualname__``, at most :data:`QUALIFIED_CHARS` each. Robust
    to a class whose attributes raise or are not strings (a program's metaclass may make them so): then
    ``("", its __name__)``, or ``("", "UnknownException")``."""
    try:
        return "".join((cls.__module__,))[:QUALIFIED_CHARS], "".join((cls.__qualname__,))[:QUALIFIED_CHARS]
    except BaseException:
        pass
    try:
        return "", "".join((cls.__name__,))[:QUALIFIED_CHARS]
    except BaseException:
        return "", "UnknownException"


def qualified_name(cls: type) -> str:
    """An exception class by module and qualified name (``re.error``, ``json.decoder.JSONDecodeError``,
    ``__sandbox__.Stack.Empty`` for a class the program defines); a builtin's by its name alone
    (``ValueError``), as is a class whose module cannot be read."""
    module, qualname = class_names(cls)
    return qualname if module in ("builtins", "") else f"{module}.{qualname}"


def describe(exc: BaseException, phase: str, source: str, line: int | None, message_chars: int) -> tuple[str, str, str]:
    """(status, error_type, message) for an exception that ended the program's top level or a test
    statement, naming the ``phase`` ("program" or "tests") line it came from; robust to exceptions a
    program defined (their attributes may raise)."""
    cls = type(exc)
    status = "failed" if issubclass(cls, AssertionError) else "killed" if issubclass(cls, MemoryError) else "error"
    try:
        if issubclass(cls, OSError) and exc.errno in (27, 28):  # EFBIG: RLIMIT_FSIZE; ENOSPC: the disk quota
            status = "killed"
    except BaseException:
        pass
    try:
        error_type = "".join((cls.__name__,))
    except BaseException:
        error_type = "UnknownException"
    try:
        if issubclass(cls, SystemExit):
            detail = f"exit({exc.code!r}) in the {phase}, before the tests finished"
        elif issubclass(cls, SyntaxError) and exc.filename in ("<program>", "<tests>"):
            detail = "".join((str(exc.msg),))
            line = exc.lineno
        else:
            detail = "".join((str(exc),)) or ("assertion failed" if status == "failed" else error_type)
    except BaseException:
        detail = error_type
    lines = source.splitlines()
    if type(line) is int and 1 <= line <= len(lines):
        detail += f" ({phase} line {line}: {lines[line - 1].strip()[:200]})"
    elif issubclass(cls, SyntaxError):
        detail += f" (in the {phase})"
    return status, error_type, detail[:message_chars]
