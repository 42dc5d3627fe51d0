"""How long a batch will take: the estimate behind deadline-aware admission and load shedding.

A batch's time is close to linear in its work: a fixed part (launches, grouping set-up, thread hand-offs)
plus a part per unit of network input. A unit is one scale-1 pass over an ``input_size``-square input, so a
wide image, a flip test or a second scale cost what they cost in pixels. The two coefficients are fitted
online by exponentially weighted least squares over measured batches (warm-up seeds them with every batch
size), so the estimate follows the machine as it is now: another tenant on the node, a slower shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pose.preprocess import plan_transform
from service.options import RunOptions

__all__ = ["BatchCostModel", "work_units"]


def work_units(sizes: Iterable[tuple[int, int]], run: RunOptions, input_size: int) -> float:
    """Network work of images of ``(width, height)``, in scale-1 square-input passes, read from headers
    before any pixel is decoded."""
    passes = 2 if run.flip else 1
    total = 0.0
    for width, height in sizes:
        for scale in run.scales:
            w_in, h_in = plan_transform(width, height, input_size, scale).input_size
            total += passes * w_in * h_in / input_size**2
    return total


class BatchCostModel:
    """Seconds a batch takes as ``fixed_s + per_unit_s * units``, fitted to measured batches.

    Older batches count less by ``decay`` per new one. While every batch seen so far had the same work (a
    saturated service runs full batches), the slope cannot be separated from the intercept; the intercept
    then keeps its last value and only the slope follows the measurements.
    """

    def __init__(self, decay: float = 0.9) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.fixed_s = 0.0
        self.per_unit_s = 0.0
        self.batches = 0
        self.error_s = 0.0  # recent mean absolute error of the estimate, for a margin on deadlines
        self._w = self._x = self._xx = self._t = self._xt = 0.0

    @property
    def known(self) -> bool:
        """At least one batch was measured; before that every estimate is 0 (admit, then learn)."""
        return self.batches > 0

    def observe(self, units: float, seconds: float) -> None:
        """Add one measured batch of ``units`` work that took ``seconds``."""
        if units <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        d = self.decay
        if self.batches:
            self.error_s = d * self.error_s + (1 - d) * abs(seconds - self.seconds(units))
        self._w = d * self._w + 1
        self._x = d * self._x + units
        self._xx = d * self._xx + units * units
        self._t = d * self._t + seconds
        self._xt = d * self._xt + units * seconds
        self.batches += 1
        spread = self._w * self._xx - self._x**2
        if spread > 1e-6 * self._x**2:
            slope = (self._w * self._xt - self._x * self._t) / spread
            intercept = (self._t - slope * self._x) / self._w
            if slope > 0 and intercept >= 0:
                self.fixed_s, self.per_unit_s = intercept, slope
                return
            if slope > 0:  # noise put the line through a negative intercept: a line through the origin
                self.fixed_s, self.per_unit_s = 0.0, self._xt / self._xx
                return
        fixed = min(self.fixed_s, self._t / self._w)
        self.fixed_s, self.per_unit_s = fixed, max(0.0, (self._t - fixed * self._w) / self._x)

    def seconds(self, units: float, batches: int = 1) -> float:
        """Estimated time of ``batches`` batches holding ``units`` work between them."""
        if units <= 0 or batches <= 0:
            return 0.0
        return batches * self.fixed_s + units * self.per_unit_s

    def margin_s(self) -> float:
        """What a deadline decision adds to an estimate: twice the recent mean error (about 1.6 standard
        deviations of normal errors), so a request is started only when it will very likely be in time."""
        return 2.0 * self.error_s
