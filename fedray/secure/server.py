"""The controller's side of a SecAgg+ round: the neighbour graph, the public keys and the encrypted shares it routes,
the masked vectors it adds up, the shares it asks the survivors for, and the masks it removes. It holds what a real
server holds: public keys, ciphertexts it cannot open, masked vectors (summed as they arrive), and the one set of
shares per site that the unmasking needs (b of a survivor, or the s key of a dropped site: never both).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fedray.secure import keys, masking, shamir


class Unrecoverable(ValueError):
    """Too few sites answered to remove the masks (fewer than the threshold); the message is one line."""


class SecureRound:
    def __init__(self, group: Mapping[str, Any], seed: int, current_round: int, cohort: Sequence[int]) -> None:
        """`group`: the job's secure_aggregation keys; `cohort`: the round's site numbers."""
        self.modulus_bits = group["modulus_bits"]
        self.clipping_range, self.quantization_bits = float(group["clipping_range"]), group["quantization_bits"]
        self.shares = masking.share_count(len(cohort), group["num_shares"])
        self.threshold = min(self.shares, max(2, masking.threshold_count(group["threshold"], self.shares)))
        self.graph = masking.neighbours(list(cohort), self.shares, seed, current_round)
        self.public: dict[int, tuple[bytes, bytes]] = {}  # stage 0's answers: (c, s) public keys
        self.shared: set[int] = set()  # the sites that sent their encrypted shares (stage 1)
        self.inbox: dict[int, dict[int, bytes]] = {}  # receiver -> sender -> ciphertext
        self.total: Optional[np.ndarray] = None  # the masked vectors' sum so far
        self.survivors: set[int] = set()  # the sites whose masked vectors are in it
        self.sent: dict[int, int] = dict.fromkeys(cohort, 0)  # bytes each site sent and received in the protocol
        self.received: dict[int, int] = dict.fromkeys(cohort, 0)

    def advertised(self, site: int, public: tuple[bytes, bytes]) -> None:
        self.public[site] = public
        self.sent[site] += sum(map(len, public))

    def key_request(self, site: int) -> dict[int, tuple[bytes, bytes]]:
        """Stage 1's message to `site`: its neighbours' public keys (its own included), of those that advertised."""
        request = {peer: self.public[peer] for peer in self.graph[site] if peer in self.public}
        self.received[site] += sum(len(c) + len(s) for c, s in request.values())
        return request

    def shares_sent(self, site: int, ciphertexts: Mapping[int, bytes]) -> None:
        self.shared.add(site)
        for peer, ciphertext in ciphertexts.items():
            self.inbox.setdefault(peer, {})[site] = ciphertext
            self.sent[site] += len(ciphertext)

    def check(self, active: set[int], stage: str) -> None:
        """Every active site still has `threshold` active neighbours (itself included), as Flower checks."""
        for site in sorted(active):
            alive = len(set(self.graph[site]) & active)
            if alive < self.threshold:
                raise Unrecoverable(f"secure aggregation: after {stage}, site-{site} has {alive} of its {self.shares} "
                                    f"neighbours, threshold={self.threshold} needed")

    def mask_keys(self) -> dict[int, dict[int, bytes]]:
        """Stage 2's message: each site's neighbours that shared their keys, by their s public keys."""
        message = {site: {peer: self.public[peer][1] for peer in self.graph[site] if peer in self.shared}
                   for site in sorted(self.shared)}
        for site, peers in message.items():
            self.received[site] += 32 * len(peers)
        return message

    def add(self, sites: Sequence[int], vector: np.ndarray) -> None:
        """A site's masked vector, or a batch's sum of its sites' masked vectors, modulo 2^modulus_bits."""
        vector = np.asarray(vector)
        self.total = masking.modular_sum([v for v in (self.total, vector) if v is not None], self.modulus_bits)
        self.survivors.update(sites)
        for site in sites:
            self.sent[site] += vector.nbytes  # each site sends one vector, even when its batch sent one for all

    def dropped(self) -> set[int]:
        """The sites that shared their keys and sent no masked vector: their pairwise masks must be removed."""
        return self.shared - self.survivors

    def unmask_request(self, site: int) -> dict[str, Any]:
        """Stage 3's message to a survivor: the ciphertexts its neighbours sent it, their c public keys, and which of
        them to answer for with b (survivors) or with the s key (dropped)."""
        peers = set(self.graph[site]) & self.shared
        request = {"inbox": {peer: c for peer, c in self.inbox.get(site, {}).items() if peer in peers},
                   "c_publics": {peer: self.public[peer][0] for peer in peers},
                   "survivors": sorted(peers & self.survivors), "dropped": sorted(peers & self.dropped()),
                   "threshold": self.threshold}
        self.received[site] += sum(map(len, request["inbox"].values())) + 4 * len(peers)
        return request

    def unmask(self, answers: Mapping[int, Mapping[int, bytes]]) -> np.ndarray:
        """The exact sum of the survivors' quantized vectors modulo 2^modulus_bits, from the survivors' answers
        (site -> peer -> share). Raises Unrecoverable when a secret has fewer than `threshold` shares."""
        if len(self.survivors) < self.threshold:
            raise Unrecoverable(f"secure aggregation: {len(self.survivors)} sites sent masked vectors, "
                                f"threshold={self.threshold} needed")
        for site, shares in answers.items():
            self.sent[site] += sum(map(len, shares.values()))
        self_seeds = [self._recover(site, answers, "self mask") for site in sorted(self.survivors)]
        pairs = []
        for site in sorted(self.dropped()):
            peers = sorted(set(self.graph[site]) & self.survivors)
            if not peers:
                continue
            private = self._recover(site, answers, "pairwise masks (it dropped out)")
            agreed = keys.agreements(private, {peer: self.public[peer][1] for peer in peers})
            pairs.extend((peer, site, agreed[peer]) for peer in peers)
        return masking.unmasked(self.total, self_seeds, pairs, self.modulus_bits)

    def _recover(self, site: int, answers: Mapping[int, Mapping[int, bytes]], what: str) -> bytes:
        shares = [(peer, answer[site]) for peer, answer in sorted(answers.items()) if site in answer]
        if len(shares) < self.threshold:
            raise Unrecoverable(f"secure aggregation: site-{site}'s {what} needs threshold={self.threshold} shares, "
                                f"only {len(shares)} of its neighbours answered")
        return shamir.combine(shares, self.threshold)

    def costs(self, sites: Sequence[int]) -> dict[str, Any]:
        """Bytes each of `sites` sent and received in the protocol (mean, max), and the round's graph."""
        sent = [self.sent[site] for site in sites] or [0]
        received = [self.received[site] for site in sites] or [0]
        return {"num_shares": self.shares, "threshold": self.threshold, "survivors": len(self.survivors),
                "dropped": [f"site-{site}" for site in sorted(self.dropped())],
                "bytes_sent_per_site": {"mean": float(np.mean(sent)), "max": int(max(sent))},
                "bytes_received_per_site": {"mean": float(np.mean(received)), "max": int(max(received))}}
