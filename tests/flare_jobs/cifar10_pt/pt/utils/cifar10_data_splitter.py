import json
import os

import numpy as np
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

NUM_IMAGES = 224  # the stand-in learner's FakeData training images (the last 32 are its validation set)


class Cifar10DataSplitter(FLComponent):
    """FLARE's server component, in its shape: at START_RUN, Dirichlet-split the training set's indices into
    `{split_dir}/site-k.npy`, one file per site, and a summary.txt."""

    def __init__(self, split_dir: str = None, num_sites: int = 8, alpha: float = 0.5, seed: int = 0):
        super().__init__()
        if split_dir is None or not os.path.isabs(split_dir):
            raise ValueError("`split_dir` needs to be absolute path.")
        self.split_dir, self.num_sites, self.alpha, self.seed = split_dir, int(num_sites), float(alpha), seed

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self.split(fl_ctx)

    def split(self, fl_ctx: FLContext):
        rng = np.random.default_rng(self.seed)
        self.log_info(fl_ctx, f"Partition into {self.num_sites} sites with Dirichlet sampling under alpha {self.alpha}")
        shares = rng.dirichlet([self.alpha] * self.num_sites)
        cuts = (np.cumsum(shares)[:-1] * NUM_IMAGES).astype(int)
        os.makedirs(self.split_dir, exist_ok=True)
        parts = np.split(rng.permutation(NUM_IMAGES), cuts)
        for site, part in enumerate(parts, start=1):
            np.save(os.path.join(self.split_dir, f"site-{site}.npy"), np.sort(part))
        with open(os.path.join(self.split_dir, "summary.txt"), "w") as summary:
            summary.write(json.dumps({f"site-{k}": len(p) for k, p in enumerate(parts, start=1)}))
