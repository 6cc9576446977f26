"""The figures the benchmark reports, as ratios measured in one run (absolute times on shared 2-core
machines drift from run to run; ratios much less), against the goals in the benchmark issue."""

import time

COMPARE_AT = 16
# JPEGs a request in the load that sends several: at COMPARE_AT // PER_REQUEST requests in flight, the
# same 16 images as the one-image loads at COMPARE_AT
PER_REQUEST = 8


def ratios(r: dict) -> dict:
    served = r["attnserve"]
    best_c = max(served, key=lambda c: served[c]["throughput_images_per_s"])
    at = served[COMPARE_AT]["throughput_images_per_s"]
    out = {
        "best_concurrency": best_c,
        "throughput_vs_limit": served[best_c]["throughput_images_per_s"] / r["limit"]["best_throughput"],
        "batch1_latency_over_limit_ms": served[1]["p50_ms"] - r["limit"]["batch1_latency_ms"]
        if 1 in served
        else None,
        "maps_vs_no_maps": r["attnserve_maps"]["throughput_images_per_s"] / at,
        "rollout_vs_no_maps": r["attnserve_rollout"]["throughput_images_per_s"] / at
        if "attnserve_rollout" in r
        else None,
        "limit_rollout_vs_predictions": r["limit_rollout"]["best_throughput"] / r["limit"]["best_throughput"]
        if "limit_rollout" in r
        else None,
        "photos_1080p_vs_model_size": r["attnserve_1080p"]["throughput_images_per_s"] / at,
        "batching_on_vs_off": at / r["attnserve_no_batching"]["throughput_images_per_s"],
        "several_per_request_vs_limit": r["attnserve_several_per_request"]["throughput_images_per_s"]
        / r["limit"]["best_throughput"]
        if "attnserve_several_per_request" in r
        else None,
        "stream_vs_limit": r["attnserve_stream"]["throughput_images_per_s"] / r["limit"]["best_throughput"]
        if "attnserve_stream" in r
        else None,
        "onnxruntime_vs_eager": r["limit"]["best_throughput"] / r["eager"]["best_throughput"],
    }
    if "device_resident" in r["limit"]:
        out["limit_vs_device_resident"] = (
            r["limit"]["best_throughput"] / r["limit"]["device_resident"]["best_throughput"]
        )
    if "attnserve_workers" in r:
        many = r["attnserve_workers"]
        best_many = max(many, key=lambda c: many[c]["throughput_images_per_s"])
        out["workers_throughput_vs_limit"] = (
            many[best_many]["throughput_images_per_s"] / r["limit"]["best_throughput"]
        )
        out["workers_vs_one_process"] = many[COMPARE_AT]["throughput_images_per_s"] / at
        if 1 in many:
            out["workers_batch1_latency_over_limit_ms"] = many[1]["p50_ms"] - r["limit"]["batch1_latency_ms"]
        out["workers_1080p_vs_model_size"] = (
            r["attnserve_workers_1080p"]["throughput_images_per_s"]
            / many[COMPARE_AT]["throughput_images_per_s"]
        )
        # CPU per image, the server's against session.run's: what the serving layer costs, whoever
        # else (the load generator) shares the machine
        out["limit_cpu_vs_workers_cpu"] = (
            r["limit"]["cpu_ms_per_image"] / many[COMPARE_AT]["server_cpu_ms_per_image"]
        )
        out["load_generator_cores_c16"] = many[COMPARE_AT]["client_cores"]
    if "mlserver_v2_tensors" in r:
        ours, peer = r["attnserve_v2_tensors"], r["mlserver_v2_tensors"]
        out["v2_throughput_vs_mlserver"] = ours["throughput_images_per_s"] / peer["throughput_images_per_s"]
        out["v2_p99_vs_mlserver"] = ours["p99_ms"] / peer["p99_ms"]
    if "limit_int8" in r:
        out["int8_vs_fp32_throughput"] = r["limit_int8"]["best_throughput"] / r["limit"]["best_throughput"]
        out["int8_top1_agreement"] = r["int8_top1_agreement"]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


GOALS = [  # (key, figure, goal text, test)
    ("throughput_vs_limit", "attnserve best throughput / ONNX Runtime limit", "≥ 0.9", lambda v: v >= 0.9),
    (
        "batch1_latency_over_limit_ms",
        "attnserve batch-1 p50 at concurrency 1 − session.run (ms)",
        "≤ 1 ms",
        lambda v: v <= 1.0,
    ),
    (
        "workers_throughput_vs_limit",
        "attnserve with worker processes, best throughput / ONNX Runtime limit",
        "≥ 0.9",
        lambda v: v >= 0.9,
    ),
    (
        "workers_batch1_latency_over_limit_ms",
        "workers, batch-1 p50 at concurrency 1 − session.run (ms)",
        "≤ 1 ms",
        lambda v: v <= 1.0,
    ),
    ("workers_vs_one_process", "workers / one process (throughput, c=16)", "—", None),
    (
        "workers_1080p_vs_model_size",
        "workers, 1080p JPEGs / model-size JPEGs",
        "≥ 0.8",
        lambda v: v >= 0.8,
    ),
    (
        "limit_cpu_vs_workers_cpu",
        "session.run CPU per image / workers' server CPU per image (c=16)",
        "—",
        None,
    ),
    ("load_generator_cores_c16", "cores the load generator used (workers, c=16)", "—", None),
    ("maps_vs_no_maps", "with every attention map / without (throughput)", "≥ 0.95", lambda v: v >= 0.95),
    ("rollout_vs_no_maps", "with the rollout map / without (throughput)", "≥ 0.95", lambda v: v >= 0.95),
    (
        "limit_rollout_vs_predictions",
        "session.run with the rollout / predictions only (throughput)",
        "≥ 0.95",
        lambda v: v >= 0.95,
    ),
    ("photos_1080p_vs_model_size", "1080p JPEGs / model-size JPEGs", "≥ 0.8", lambda v: v >= 0.8),
    (
        "several_per_request_vs_limit",
        f"attnserve with {PER_REQUEST} JPEGs a request / ONNX Runtime limit",
        "—",
        None,
    ),
    (
        "stream_vs_limit",
        f"attnserve, one stream with {COMPARE_AT} frames in flight / ONNX Runtime limit",
        "—",
        None,
    ),
    ("v2_throughput_vs_mlserver", "attnserve / MLServer throughput, V2, c=16", "≥ 2", lambda v: v >= 2),
    ("v2_p99_vs_mlserver", "attnserve / MLServer p99, V2 tensors, c=16", "≤ 1", lambda v: v <= 1),
    ("onnxruntime_vs_eager", "ONNX Runtime limit / PyTorch eager (throughput)", "≥ 2", lambda v: v >= 2),
    (
        "limit_vs_device_resident",
        "ONNX Runtime limit / the same with inputs and outputs on the GPU (IO binding)",
        "—",
        None,
    ),
    ("int8_vs_fp32_throughput", "int8 / fp32 limit throughput", "—", None),
    ("int8_top1_agreement", "int8 top-1 agreement with fp32 (manifest)", "≥ 0.99", lambda v: v >= 0.99),
    ("batching_on_vs_off", "dynamic batching on / off (throughput, c=16)", "—", None),
]


def markdown(results: dict) -> str:
    lines = []
    for name, r in results["models"].items():
        figures = results["ratios"][name]
        lines += [f"### {section_title(name, results)}", "", measured_line(results), ""]
        lines += ["| figure | measured | goal | met |", "|---|---|---|---|"]
        for key, label, goal, test in GOALS:
            if key in figures and figures[key] is not None:
                met = "" if test is None else ("yes" if test(figures[key]) else "**no**")
                lines.append(f"| {label} | {figures[key]} | {goal} | {met} |")
        lines += [
            "",
            "| contender | throughput (img/s) | p50 ms | p99 ms | server CPU ms / image "
            "| load generator cores |",
            "|---|---|---|---|---|---|",
        ]
        lines.append(
            f"| ONNX Runtime session.run, best batch ({r['limit']['best_batch']}) | "
            f"{r['limit']['best_throughput']} | {r['limit']['batch1_latency_ms']} (batch 1) | | "
            f"{r['limit'].get('cpu_ms_per_image', '')} | |"
        )
        if "device_resident" in r["limit"]:
            resident = r["limit"]["device_resident"]
            lines.append(
                f"| ONNX Runtime, inputs and outputs on the GPU (IO binding), best batch "
                f"({resident['best_batch']}) | {resident['best_throughput']} | "
                f"{resident['batch1_latency_ms']} (batch 1) | | | |"
            )
        if "limit_rollout" in r:
            rolled = r["limit_rollout"]
            lines.append(
                f"| ONNX Runtime session.run with the rollout, best batch ({rolled['best_batch']}) | "
                f"{rolled['best_throughput']} | {rolled['batch1_latency_ms']} (batch 1) | | | |"
            )
        eager = r["eager"]
        lines.append(
            f"| PyTorch eager, best batch ({eager['best_batch']}) | {eager['best_throughput']} | | | | |"
        )
        for c, s in r["attnserve"].items():
            lines.append(_row(f"attnserve, JPEG at model size, c={c}", s))
        for c, s in r.get("attnserve_workers", {}).items():
            lines.append(_row(f"attnserve, {r['workers']} workers, JPEG at model size, c={c}", s))
        if "attnserve_workers_1080p" in r:
            lines.append(
                _row(f"attnserve, {r['workers']} workers, 1080p JPEG, c=16", r["attnserve_workers_1080p"])
            )
        for key, label in (
            ("attnserve_maps", "attnserve, all maps, c=16"),
            ("attnserve_rollout", "attnserve, rollout map, c=16"),
            ("attnserve_1080p", "attnserve, 1080p JPEG, c=16"),
            (
                "attnserve_several_per_request",
                f"attnserve, {PER_REQUEST} JPEGs a request, c={COMPARE_AT // PER_REQUEST}",
            ),
            ("attnserve_stream", f"attnserve, one stream, {COMPARE_AT} frames in flight"),
            ("attnserve_no_batching", "attnserve, batching off, c=16"),
            ("attnserve_v2_tensors", "attnserve V2 tensors, c=16"),
            ("mlserver_v2_tensors", "MLServer V2 tensors, c=16"),
        ):
            if key in r:
                lines.append(_row(label, r[key]))
        lines.append("")
    return "\n".join(lines)


def _row(label: str, s: dict) -> str:
    errors = f" ({s['errors']} errors)" if s["errors"] else ""
    cpu = (
        f" | {s['server_cpu_ms_per_image']} | {s['client_cores']}"
        if "server_cpu_ms_per_image" in s
        else " | |"
    )
    return f"| {label}{errors} | {s['throughput_images_per_s']} | {s['p50_ms']} | {s['p99_ms']}{cpu} |"


ANALYSIS_HEADING = "## Where the time goes"
HEADER = (
    "# Benchmarks\n\n"
    "Each model's section comes from one run of the command it names (`make bench` runs them all; "
    "`python -m bench --models NAME` re-measures one and keeps the others). Ratios come from one run on "
    "one machine; absolute figures drift between runs on shared machines.\n\n"
)


def document(results: dict, table: str, previous: str = "") -> str:
    """The benchmarks page: this run's model sections, the sections of models it did not run kept from
    ``previous`` (in their place), then the hand-written analysis kept from ``previous``."""
    analysis = previous[previous.index(ANALYSIS_HEADING) :] if ANALYSIS_HEADING in previous else ""
    sections = _sections(previous[: len(previous) - len(analysis)])
    sections.update(_sections(table))
    return HEADER + "".join(sections.values()) + analysis


def _sections(text: str) -> dict[str, str]:
    """``### name`` sections of a page, by model name, in page order."""
    parts = ("\n" + text).split("\n### ")
    return {part.split("\n", 1)[0]: "### " + part.rstrip("\n") + "\n\n" for part in parts[1:]}


def section_title(model: str, results: dict) -> str:
    """A model's heading, naming the provider and the cores where they are not the default (the CPU,
    every core shared with the load generator): each setting keeps its own section in the docs."""
    cpus, cores = results.get("cpus", results["machine"]["cores"]), results["machine"]["cores"]
    setting = [] if results["provider"] == "cpu" else [results["provider"]]
    if cpus != cores:
        setting.append(f"server on {cpus} of {cores} cores")
    return ", ".join([model, *setting])


def measured_line(results: dict) -> str:
    m = results["machine"]
    v = ", ".join(f"{k} {x}" for k, x in results["versions"].items())
    cpus = results.get("cpus", m["cores"])
    cores = (
        f"{m['cores']} cores"
        if cpus == m["cores"]
        else f"{m['cores']} cores ({cpus} for session.run and the server, the others for the load generator)"
    )
    return (
        f"Measured with `{results['command']}` on {time.strftime('%Y-%m-%d')}: {m['cpu']}, {cores}"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", {results['threads']} threads for every contender, provider {results['provider']}"
        + (
            f", vision API calls over {results['connections']} connections"
            if "connections" in results
            else ""
        )
        + f"; {v}. "
        f"The run took {results['seconds']} s."
    )
