"""User-facing errors: the CLI prints their message on one line, never a traceback."""

from __future__ import annotations


def random_weights_message(name: str, consequence: str = "scores are meaningless", *, model: str = "backbone") -> str:
    """The one text saying that a model has random weights (tiny test models, ``ARCH:random``): whatever it
    produces is ``consequence``. Tiny random models give meaningless numbers; zsad never hides that."""
    return (f"{model} '{name}' has random weights: {consequence} (fine for tests and smoke runs; "
            f"use real weights for inspection)")


class ZsadError(Exception):
    """Base of every error caused by the user's input or environment, not by a bug.

    ``exit_code`` is what the CLI exits with when this error ends a run.
    """

    exit_code: int = 2


class UsageError(ZsadError):
    """A wrong option, name or path given on the command line or to the API."""


class ImageError(ZsadError):
    """One input image cannot be used; the run records it and goes on."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class WeightsNotFoundError(ZsadError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


class DatasetError(ZsadError):
    """A benchmark dataset folder is missing files or is inconsistent."""


class AdapterError(ZsadError):
    """A learned adapter folder is missing, malformed or made for another backbone."""


class BatchTooSmallError(UsageError):
    """A group has fewer images than its method scores (``Method.min_batch``): the one "too few images" error,
    raised by the runner. The command line adds which flag to change."""

    def __init__(self, method: str, needed: int, got: int) -> None:
        self.method = method
        self.needed = needed
        self.got = got
        #: what is wrong, without the advice (the command line gives its own)
        self.problem = (f"method '{method}' scores images against each other and needs at least {needed} images of "
                        f"one group, got {got}")
        super().__init__(f"{self.problem}; score fewer images with a method that scores each image on its own, such "
                         f"as 'clip'")


class ScoreError(ZsadError):
    """A method's numbers for one image cannot be decided on (NaN or inf); the run records it and goes on."""

    exit_code = 1
