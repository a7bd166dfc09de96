"""The one base for failures that carry a sentence a user can read."""

from __future__ import annotations


class UserFacingError(Exception):
    """A failure explained in one sentence for the person who asked (`str(error)` is that sentence).

    `retry_after` is set (seconds) when waiting a moment is the remedy, so replies can give an estimate.
    """

    def __init__(self, sentence: str, *, retry_after: float | None = None) -> None:
        super().__init__(sentence)
        self.retry_after = retry_after

    @property
    def sentence(self) -> str:
        return str(self.args[0])
