"""How sure the speed model is: its error on published runs it was not fitted to.

``SPEED_ERROR_BAND`` holds the leave-one-source-out figures of ``launcher.sizing.speed_fit``
(each source predicted by constants fitted on the others; a test keeps them in step with the
measurement table). An error is predicted / measured - 1: positive, the model was too fast.
A capacity answer carries the band, and the GPU count it would take at the pessimistic end:
a fleet whose real speed is the predicted speed divided by ``1 + over``.

    >>> SPEED_ERROR_BAND.pessimistic_factor > 1
    True
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorBand(BaseModel):
    """The held-out errors in brief: median size, and the band 80% of points fall in."""

    model_config = ConfigDict(frozen=True)

    points: int
    sources: int
    median: float  # median |predicted / measured - 1|
    under: float  # 10th percentile of predicted / measured - 1 (the model too slow: < 0)
    over: float  # 90th percentile (the model too fast: > 0)

    @property
    def pessimistic_factor(self) -> float:
        """How much slower than predicted the real speed is at the band's pessimistic end."""
        return 1.0 + max(self.over, 0.0)

    def line(self) -> str:
        return (
            f"speed model: {self.median:.0%} median error on sources held out of its fit; "
            f"80% of {self.points} points within {self.under:+.0%}..{self.over:+.0%} "
            f"({self.sources} sources)"
        )


SPEED_ERROR_BAND = ErrorBand(points=43, sources=7, median=0.127, under=-0.13, over=0.31)
