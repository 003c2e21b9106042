"""Stands in for PyTorch, so that Open Bandit Pipeline imports without it.

obp imports torch at the top of its modules for its neural policies and
its tensor code paths; the estimators the tests call take NumPy arrays and
only ask `isinstance(x, torch.Tensor)` of them, which is false here as it
would be with PyTorch. Anything else touched on this module raises, so a
code path that really needed PyTorch fails the test instead of passing.
Used only where PyTorch is not installed (tests/python/obp_ope.py).
"""


class Tensor:
    """Nothing is an instance of it."""


def __getattr__(name):
    raise RuntimeError(
        f"torch.{name} was used, but PyTorch is not installed: "
        "this stand-in only lets obp import"
    )
