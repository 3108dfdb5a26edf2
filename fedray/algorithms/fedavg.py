"""FedAvg (McMahan et al.): the sites' models averaged by their steps; no client term, no server state.

The base class is FedAvg already; this file names it for `algorithm=fedavg`.
"""

from fedray.algorithms import Algorithm


class FedAvg(Algorithm):
    pass
