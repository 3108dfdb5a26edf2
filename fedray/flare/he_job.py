"""FLARE's homomorphic-encryption components (nvflare/app_opt/he, its sag_pt_he job template and the
cifar10_fedavg_he example) in a job folder: `secure_aggregation=he`, fedray's own (fedray/secure/he.py).

The client's HEModelDecryptor (task_data_filters) and HEModelEncryptor (task_result_filters), the server's
HEInTimeAccumulateWeightedAggregator, HEModelShareableGenerator and HEModelSerializeFilter are one feature: a job
needs the filters and the aggregator together. The TenSEAL contexts, which FLARE's provisioning (HEBuilder) puts
in the startup kits, fedray makes per job from the secure_aggregation keys (HEBuilder's defaults).
"""

from __future__ import annotations

from typing import Any, Callable

ENCRYPTOR, DECRYPTOR, AGGREGATOR = "HEModelEncryptor", "HEModelDecryptor", "HEInTimeAccumulateWeightedAggregator"
GENERATOR, SERIALIZER = "HEModelShareableGenerator", "HEModelSerializeFilter"
# Each filter's list in config_fed_client, and the context file FLARE's filters read by default.
FILTERS = {DECRYPTOR: "task_data_filters", ENCRYPTOR: "task_result_filters"}
SITE_CONTEXT, SERVER_CONTEXT = "client_context.tenseal", "server_context.tenseal"


def client_without_he(job: Any, client: dict[str, Any], app: str, class_name: Callable[[dict], str]) -> dict[str, Any]:
    """`client` (a config_fed_client) without its HE filters, which are noted on `job` (their args checked); a
    filter in the other list stays, for the usual refusal."""
    client = dict(client)
    for name, key in FILTERS.items():
        kept = []
        for entry in client.get(key) or []:
            filters = entry.get("filters", [])
            for found in [f for f in filters if class_name(f) == name]:
                _filter(job, name, found.get("args") or {}, app)
            others = [f for f in filters if class_name(f) != name]
            if others or not filters:
                kept.append({**entry, "filters": others} if filters else entry)
        client[key] = kept
    return client


def _filter(job: Any, name: str, args: dict[str, Any], app: str) -> None:
    job.he_parts.add(name)
    where = f"{app}'s {name}"
    if args.get("tenseal_context_file", SITE_CONTEXT) != SITE_CONTEXT:
        job.warnings.append(f"{where} tenseal_context_file={args['tenseal_context_file']}: fedray makes the "
                            "job's contexts itself (secure_aggregation.poly_modulus_degree, coeff_mod_bit_sizes, scale_bits)")
    if name != ENCRYPTOR:
        return
    if args.get("weigh_by_local_iter", True) is not True:
        job.errors.append(f"{where} weigh_by_local_iter=false: fedray's sites weigh their update by "
                          "NUM_STEPS_CURRENT_ROUND before encrypting it (FLARE's default)")
    if args.get("encrypt_layers") not in (None, [], ""):
        job.errors.append(f"{where} encrypt_layers={args['encrypt_layers']}: fedray encrypts every layer")
    for site, weight in (args.get("aggregation_weights") or {}).items():
        job.set(f"+workflows.scatter_and_gather.aggregation_weights.{site}", weight)


def aggregator(aggregation: Callable[[Any, dict[str, Any], str], None]) -> Callable[[Any, dict[str, Any]], None]:
    """HEInTimeAccumulateWeightedAggregator: InTimeAccumulateWeightedAggregator's args, over ciphertexts."""
    def translate(job: Any, args: dict[str, Any]) -> None:
        job.he_parts.add(AGGREGATOR)
        aggregation(job, args, AGGREGATOR)
        if args.get("weigh_by_local_iter", False) is not False:
            job.errors.append(f"{AGGREGATOR} weigh_by_local_iter=true: HEModelEncryptor weighs each update already "
                              "(FLARE recommends false)")
    return translate


def part(name: str) -> Callable[[Any, dict[str, Any]], None]:
    """HEModelShareableGenerator, HEModelSerializeFilter: FLARE's plumbing for encrypted models (the global
    model kept and persisted encrypted at the server); fedray's controller keeps the ciphertexts itself."""
    def translate(job: Any, args: dict[str, Any]) -> None:
        job.he_parts.add(name)
        if args.get("tenseal_context_file", SERVER_CONTEXT) != SERVER_CONTEXT:
            job.warnings.append(f"{name} tenseal_context_file={args['tenseal_context_file']}: fedray makes the "
                                "job's contexts itself")
    return translate


def is_serializer(job: Any, component_id: Any, class_name: Callable[[dict], str]) -> bool:
    """PTFileModelPersistor's filter_id names an HEModelSerializeFilter (FLARE's sag_pt_he)."""
    return class_name(job.components.get(component_id) or {}) == SERIALIZER


def finish(job: Any) -> None:
    """With any HE component: secure_aggregation=he, if the filters and the aggregator are all there."""
    if not job.he_parts:
        return
    missing = [name for name in (ENCRYPTOR, DECRYPTOR, AGGREGATOR) if name not in job.he_parts]
    if missing:
        job.errors.append(f"{', '.join(sorted(job.he_parts))} without {', '.join(missing)}: FLARE's homomorphic "
                          "encryption needs the sites' HEModelEncryptor and HEModelDecryptor filters and the server's "
                          f"{AGGREGATOR} together")
        return
    job.set("secure_aggregation", "he")
