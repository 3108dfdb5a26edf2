"""Datasets and their split into sites: CIFAR-10 (`cifar10`), the generated stand-in (`synthetic`),
seeded IID and Dirichlet shards (`partition`), and by it natural id, shard, pathological, size-skew and
inner-Dirichlet splits (`partitioners`). Arrays in, arrays out: no Ray."""
