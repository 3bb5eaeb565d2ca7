"""The registry of functions that a child can run, by name.

Every child imports this module at start-up, so annotations that need
typing are strings instead of a ``from __future__`` import.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., Any])

_functions: "dict[str, Callable[..., Any]]" = {}


def _add(name: str, function: "Callable[..., Any]") -> None:
    if not isinstance(name, str):
        message = f"function name must be a str, not {type(name).__name__}"
        raise TypeError(message)
    if not name:
        raise ValueError("function name must not be empty")
    if not callable(function):
        message = f"cannot register {function!r} as {name!r}: not callable"
        raise TypeError(message)
    registered = _functions.get(name)
    if registered is not None and registered is not function:
        message = (
            f"{name!r} is already registered to {registered!r}; "
            f"register {function!r} under another name"
        )
        raise ValueError(message)
    _functions[name] = function


if TYPE_CHECKING:

    @overload
    def register(name_or_function: F, /) -> F: ...

    @overload
    def register(name_or_function: str, /) -> Callable[[F], F]: ...

    @overload
    def register(name_or_function: str, function: F, /) -> F: ...


def register(
    name_or_function: "str | Callable[..., Any]",
    function: "Callable[..., Any] | None" = None,
    /,
) -> "Any":
    """Register a function that ``pyfork.fork()`` can run in a child.

    Three forms:

    - ``@register`` registers under the function's ``__name__``;
    - ``@register("name")`` registers under ``name``;
    - ``register("name", function)`` registers ``function`` directly.

    Each form returns the function unchanged. Registering the same
    function under the same name again does nothing. Registering another
    function under a name that is taken raises ValueError.

    Register every function before ``pyfork.init()`` runs: the child looks
    the name up when its ``init()`` dispatches.
    """
    if isinstance(name_or_function, str):
        name = name_or_function
        if function is not None:
            _add(name, function)
            return function

        def decorator(target: "F") -> "F":
            _add(name, target)
            return target

        return decorator

    if function is not None:
        message = (
            "register(name, function) takes the name first; "
            f"got {name_or_function!r} as the name"
        )
        raise TypeError(message)
    target = name_or_function
    target_name = getattr(target, "__name__", None)
    if not isinstance(target_name, str):
        message = (
            f"{target!r} has no __name__; "
            "register it with register('name', function)"
        )
        raise TypeError(message)
    _add(target_name, target)
    return target


def lookup(
    name_or_function: "str | Callable[..., Any]",
) -> "tuple[str, Callable[..., Any]]":
    """Return the registered name and function for a name or a function.

    Raises NotRegisteredError when it was never registered.
    """
    from ._errors import NotRegisteredError

    if isinstance(name_or_function, str):
        function = _functions.get(name_or_function)
        if function is None:
            message = (
                f"no function is registered as {name_or_function!r}; "
                "decorate it with @pyfork.register above pyfork.init()"
            )
            raise NotRegisteredError(message)
        return name_or_function, function

    for name, function in _functions.items():
        if function is name_or_function:
            return name, function
    message = (
        f"{name_or_function!r} is not registered; decorate it with "
        "@pyfork.register above pyfork.init()"
    )
    raise NotRegisteredError(message)


def get(name: str) -> "Callable[..., Any] | None":
    """Return the function registered as ``name``, or None."""
    return _functions.get(name)
