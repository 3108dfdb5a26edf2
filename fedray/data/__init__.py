"""Datasets and their split into sites: CIFAR-10 (`cifar10`), the generated stand-in (`synthetic`),
seeded IID and Dirichlet shards (`partition`). Arrays in, arrays out: no Ray."""
