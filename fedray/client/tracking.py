"""`fedray.client.tracking.SummaryWriter`: a script's metrics, streamed into the run's TensorBoard logs
under the site's name (`tb/site-k/`), as FLARE's client-side SummaryWriter does."""

from __future__ import annotations

import warnings
from typing import Mapping, Optional

from fedray import client


class SummaryWriter:
    def add_scalar(self, tag: str, scalar: float, global_step: Optional[int] = None, **_: object) -> None:
        site = client._current()
        if site.stream is None:
            warnings.warn("no metrics channel in this site: SummaryWriter points are dropped", stacklevel=2)
            return
        site.stream(site.site, tag, float(scalar), int(global_step or 0))

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, float], global_step: Optional[int] = None,
                    **_: object) -> None:
        for tag, scalar in tag_scalar_dict.items():
            self.add_scalar(f"{main_tag}/{tag}", scalar, global_step)

    def flush(self) -> None:
        """Points are sent as they are added; nothing is held here."""
