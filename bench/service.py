"""Service overhead benchmark: ``POST /predict`` through a real uvicorn server vs. ``predict_series`` directly.

One run, one 300-slice phantom series, one model (the ``cpu`` preset, untrained unless ``--model DIR`` names a
trained artifact: the network's weights do not change its speed). Measured alternately, request by request, so both
see the same machine load:

- **direct**: ``read_series`` + ``predict_series`` in this process (what ``ctphase predict`` does per series);
- **service**: ``POST /predict`` with one task to a uvicorn server on 127.0.0.1 (same process, its own thread) via
  httpx: HTTP + JSON + auth-free routing + champion lookup (a database query) + series resolution + the same
  ``read_series``/prediction + the ``prediction_log`` insert.

Prints p50/p95 of both and the overhead of the service's p50 over the direct p50 (acceptance: < 10 %), plus the
service's fixed per-request cost (a task whose series does not exist: HTTP, routing, champion query, resolution),
which is less sensitive to other load on a shared machine than the difference of two noisy medians.
Usage::

    .venv/bin/python bench/service.py [--requests 20] [--slices 300] [--model DIR]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="phase" toName="image">'
    '<Choice value="Non-contrast"/><Choice value="Arterial"/><Choice value="Venous"/><Choice value="Others"/>'
    "</Choices></View>"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _make_model(out: Path, given: Path | None) -> tuple[Path, str]:
    if given is not None:
        return given, f"trained artifact {given}"
    from backend.ml.network import PRESETS, build_manifest, create_network, save_model

    preset = PRESETS["cpu"]
    save_model(out, network=create_network(preset), manifest=build_manifest(preset, fingerprint="bench", metrics={}))
    return out, f"cpu preset ({preset.arch} @ {preset.image_size}), untrained"


def _start_server(app: object, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="timed requests (>= 20 for a p95)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--model", type=Path, default=None, help="a trained model directory (default: untrained)")
    args = parser.parse_args()

    from backend import registry
    from backend.config import Settings
    from backend.db import make_engine, make_session_factory
    from backend.main import create_app
    from backend.ml.dicom import read_series
    from backend.ml.network import load_model
    from backend.ml.phantom import write_phantom_series
    from backend.ml.predict import predict_series
    from backend.prestart import upgrade

    with tempfile.TemporaryDirectory(prefix="ctphase-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "dicom"
        record = write_phantom_series(root / "s1", phase="venous", seed=0, n_slices=args.slices)
        model_dir, model_text = _make_model(tmp / "model", args.model)
        settings = Settings(
            database_url=f"sqlite:///{tmp}/bench.db", model_store=tmp / "store", dicom_roots=[root], log_level="WARNING"
        )
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        with make_session_factory(engine).begin() as session:
            row = registry.register_version(session, project="default", model_dir=model_dir, store=settings.model_store)
            registry.promote(session, project="default", version=row.version, actor="bench")
        engine.dispose()

        model = load_model(model_dir, device=settings.device)
        series_path = root / "s1"

        def direct() -> float:
            started = time.perf_counter()
            predict_series(
                model,
                read_series(series_path),
                sample_fraction=settings.sample_fraction,
                min_slices=settings.min_slices,
                method=settings.voting,
            )
            return time.perf_counter() - started

        port = _free_port()
        server, thread = _start_server(create_app(settings, loop_mode="off"), port)
        body = {"tasks": [{"id": 1, "data": {"series": "s1"}}], "project": "1.0", "label_config": LABEL_CONFIG}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

                def service() -> float:
                    started = time.perf_counter()
                    response = client.post("/predict", json=body)
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    result = response.json()["results"][0]
                    if not result["result"] or result["model_version"] != row.label:
                        raise RuntimeError(f"unexpected answer: {result}")
                    return elapsed

                for _ in range(2):  # warm-up: network load, page cache, allocator
                    direct()
                    service()
                direct_s: list[float] = []
                service_s: list[float] = []
                for _ in range(args.requests):
                    direct_s.append(direct())
                    service_s.append(service())
                missing = {**body, "tasks": [{"id": 2, "data": {"series": "no-such-series"}}]}
                fixed_s: list[float] = []
                for _ in range(args.requests):  # HTTP + routing + champion lookup + resolution, no series work
                    started = time.perf_counter()
                    client.post("/predict", json=missing).raise_for_status()
                    fixed_s.append(time.perf_counter() - started)
        finally:
            server.should_exit = True
            thread.join(timeout=10)

    d50, s50 = statistics.median(direct_s), statistics.median(service_s)
    overhead = s50 / d50 - 1.0
    print(f"series: {args.slices} slices, {record.transfer_syntax}; model: {model_text}; R={settings.sample_fraction}")
    print(f"{'':<28}{'p50 ms':>10}{'p95 ms':>10}{'min ms':>10}")
    for name, values in (("direct predict_series", direct_s), ("service POST /predict", service_s)):
        p50, p95, low = statistics.median(values), _percentile(values, 0.95), min(values)
        print(f"{name:<28}{p50 * 1000:>10.1f}{p95 * 1000:>10.1f}{low * 1000:>10.1f}")
    extra_ms = (s50 - d50) * 1000
    print(f"service overhead at p50: {overhead * 100:+.1f} % ({extra_ms:+.1f} ms; {args.requests} requests each)")
    fixed_ms = statistics.median(fixed_s) * 1000
    print(f"fixed per-request cost (task with a missing series): p50 {fixed_ms:.1f} ms = {fixed_ms / (d50 * 10):.1f} %")
    at_min = min(service_s) / min(direct_s) - 1.0
    print(f"service overhead at min: {at_min * 100:+.1f} % (least disturbed by other load on the machine)")
    verdict = "PASS" if overhead < 0.10 else "FAIL"
    print(f"acceptance (< 10 %): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
