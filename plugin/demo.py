"""``ctphase demo``: the whole loop on one machine with embedded defaults, from nothing.

1. Phantom series (``backend.ml.phantom``) under ``<workdir>/phantoms`` (the only DICOM root).
2. A starter model: the ``cpu`` preset trained on those phantoms, registered and promoted as the champion of the
   default project (skipped when a champion exists: a second run starts in seconds).
3. ``ctphase serve`` as a child process (SQLite database and model store under the work dir, no Redis: training and
   pre-labeling run in the service's own background threads).
4. Unless ``--no-label-studio`` (or when it cannot be installed): a local Label Studio in its own venv, a project
   wired to the backend (``ctphase ls init``), the phantom series imported with previews (``ctphase ls import``)
   and pre-labelled by the backend, listed in review order in the "Review first" tab.

Everything runs on 127.0.0.1. Ctrl-C stops both servers; the work dir keeps the state for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import httpx

if TYPE_CHECKING:
    from backend.config import Settings
    from plugin.client import LabelStudioClient
    from plugin.local_label_studio import Credentials, LocalLabelStudio

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR: Final[Path] = Path(".ctphase/demo")
STARTER_EPOCHS: Final[int] = 6
PRELABEL_TIMEOUT_S: Final[float] = 300.0
DEMO_MATRIX: Final[tuple[int, ...]] = (256,)
"""Phantom matrix: small enough to write, train on and pre-label in a few minutes on 2 cores."""


def register_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    demo = subparsers.add_parser(
        "demo",
        help="run the backend (and a local Label Studio) on phantom data with a starter model; Ctrl-C stops",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="state folder (default .ctphase/demo)")
    demo.add_argument("--port", type=int, default=9090, help="backend port (default 9090)")
    demo.add_argument("--label-studio-port", type=int, default=8089, help="Label Studio port (default 8089)")
    demo.add_argument(
        "--with-label-studio",
        dest="with_label_studio",
        action="store_true",
        default=True,
        help="install (once, ~1 min, 1 GB) and start a local Label Studio wired to the backend (the default)",
    )
    demo.add_argument("--no-label-studio", dest="with_label_studio", action="store_false", help="run the backend only")
    demo.add_argument(
        "--label-studio-venv", type=Path, default=Path(".cache/label-studio-venv"), help="Label Studio's venv"
    )
    demo.add_argument("--series-per-phase", type=int, default=3, help="phantom series per phase (default 3)")
    demo.add_argument("--epochs", type=int, default=STARTER_EPOCHS, help="starter model epochs (default 6)")
    demo.set_defaults(func=run_demo)


@dataclass(frozen=True)
class DemoPaths:
    """The work dir layout."""

    root: Path

    @property
    def phantoms(self) -> Path:
        """DICOM root with the phantom series and labels.csv."""
        return self.root / "phantoms"

    @property
    def files_root(self) -> Path:
        """Label Studio's LOCAL_FILES_DOCUMENT_ROOT."""
        return self.root / "ls-files"

    @property
    def previews(self) -> Path:
        """Preview cache, inside the files root."""
        return self.files_root / "previews"

    @property
    def label_studio_data(self) -> Path:
        """Label Studio's data dir."""
        return self.root / "label-studio"

    @property
    def secrets_file(self) -> Path:
        """Generated secrets of this work dir (mode 0600)."""
        return self.root / "secrets.json"


def demo_settings(paths: DemoPaths, *, port: int, ls_url: str | None, ls_token: str | None) -> Settings:
    """Settings of the demo backend: everything under the work dir, generated secrets, no broker."""
    import json

    from backend.config import Settings

    if paths.secrets_file.is_file():
        stored = json.loads(paths.secrets_file.read_text(encoding="utf-8"))
    else:
        stored = {"admin_token": secrets.token_urlsafe(24), "webhook_secret": secrets.token_urlsafe(24)}
        paths.secrets_file.write_text(json.dumps(stored), encoding="utf-8")
        paths.secrets_file.chmod(0o600)
    return Settings(
        environment="development",
        database_url=f"sqlite:///{paths.root / 'ctphase.db'}",
        model_store=paths.root / "model-store",
        dicom_roots=[paths.phantoms],
        preview_dir=paths.previews,
        label_studio_files_root=paths.files_root if ls_url is not None else None,
        ml_backend_url=f"http://127.0.0.1:{port}",
        label_studio_url=ls_url,
        label_studio_api_key=ls_token,
        admin_token=stored["admin_token"],
        webhook_secret=stored["webhook_secret"],
        broker_url=None,
        train_preset="cpu",
        train_epochs=STARTER_EPOCHS,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """``CTPHASE_*`` environment variables reproducing the given settings' non-default values for a child process."""
    import json

    from backend.config import ENV_PREFIX

    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude_unset=True).items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):
            text = json.dumps([str(item) for item in value])
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env


def ensure_phantoms(paths: DemoPaths, *, per_phase: int) -> None:
    """Write the phantom dataset unless it is there."""
    from backend.ml.phantom import generate_dataset

    if (paths.phantoms / "labels.csv").is_file():
        return
    print(f"writing {4 * per_phase} phantom series to {paths.phantoms} ...", flush=True)
    generate_dataset(paths.phantoms, n_per_class=per_phase, seed=0, matrix_sizes=DEMO_MATRIX)


def ensure_starter_model(settings: Settings, paths: DemoPaths, *, epochs: int) -> str:
    """Train, register and promote a ``cpu`` model on the phantoms unless the default project has a champion.

    Returns:
        The champion's label.
    """
    from backend import prestart, registry
    from backend.db import make_engine, make_session_factory
    from backend.ml.train import TrainConfig, load_labeled_series, train_model

    prestart.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session:
            champion = registry.resolve_champion(
                session, project=settings.default_project, default_project=settings.default_project
            )
            if champion is not None:
                return champion.label
        print(f"training the starter model (cpu preset, {epochs} epochs, a few minutes on 2 cores) ...", flush=True)
        examples = load_labeled_series(paths.phantoms, paths.phantoms / "labels.csv")
        out_dir = paths.root / "starter-model"
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        result = train_model(examples, out_dir=out_dir, config=TrainConfig(preset="cpu", epochs=epochs, seed=0))
        with sessions.begin() as session:
            row = registry.register_version(
                session, project=settings.default_project, model_dir=result.model_dir, store=settings.model_store
            )
            registry.promote(session, project=settings.default_project, version=row.version, actor="demo")
            return row.label
    finally:
        engine.dispose()


class BackendProcess:
    """``ctphase serve`` as a child process in its own process group."""

    def __init__(self, settings: Settings, *, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTPHASE_")}
        env.update(settings_env(settings))
        command = [sys.executable, "-c", "from backend.cli import main; raise SystemExit(main())"]
        command += ["serve", "--host", "127.0.0.1", "--port", str(port)]
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll ``/health`` until it answers 200.

        Raises:
            RuntimeError: the process exited or the timeout passed (with the log's last lines).
        """
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ctphase serve exited:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"ctphase serve not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
        self._log.close()


def start_label_studio(args: argparse.Namespace, paths: DemoPaths) -> tuple[LocalLabelStudio, Credentials] | None:
    """Install (once) and start the local Label Studio without waiting; None (reason printed) when that fails."""
    from plugin.local_label_studio import Credentials, LocalLabelStudio, LocalLabelStudioError, ensure_installed

    try:
        executable = ensure_installed(args.label_studio_venv.resolve())
        credentials = Credentials.load_or_create(paths.root / "label-studio.credentials.json")
        server = LocalLabelStudio(
            executable=executable,
            data_dir=paths.label_studio_data,
            port=args.label_studio_port,
            credentials=credentials,
            files_root=paths.files_root,
        )
        print(f"starting Label Studio on {server.url} (the first start migrates its database: ~40 s) ...", flush=True)
        server.start()  # it migrates while the starter model trains; wire_label_studio waits for it
    except (LocalLabelStudioError, OSError, subprocess.SubprocessError) as error:
        print(f"Label Studio not started ({error}); continuing with the backend only", file=sys.stderr)
        return None
    return server, credentials


def run_cli(settings: Settings, *args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    """Run ``ctphase ARGS`` in a child process configured with ``settings`` (parent ``CTPHASE_*`` dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTPHASE_")}
    env.update(settings_env(settings))
    command = [sys.executable, "-c", "from backend.cli import main; raise SystemExit(main())", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def wire_label_studio(settings: Settings, paths: DemoPaths) -> tuple[int, int, LabelStudioClient]:
    """``ls init`` + ``ls import`` of the phantoms; returns (project id, review view id, client).

    New tasks are pre-labelled by the backend on Label Studio's ``TASKS_CREATED`` webhook; when the import created
    nothing (a second run), ``ctphase jobs prelabel`` predicts whatever an interrupted run left without predictions.
    """
    from plugin import client as ls
    from plugin.bootstrap import import_path, init_project

    assert settings.ml_backend_url is not None
    client = ls.connect(settings)
    result = init_project(client, settings, project=settings.label_studio_project, backend_url=settings.ml_backend_url)
    report, _ = import_path(client, settings, project_id=result.project.id, path=paths.phantoms)
    print(
        f"project {result.project.id}: {len(report.created)} series imported, "
        f"{len(report.already_imported)} already there, {len(report.skipped)} skipped",
        flush=True,
    )
    if not report.created:
        done = run_cli(settings, "jobs", "prelabel", "--project", str(result.project.id))
        if done.returncode != 0:
            print(f"pre-labeling failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    return result.project.id, result.view_id, client


def wait_for_predictions(client: LabelStudioClient, *, project: int, timeout_s: float = PRELABEL_TIMEOUT_S) -> int:
    """Wait until every task of the project has a prediction (the backend pre-labels after the import webhook)."""
    from plugin import client as ls

    deadline = time.monotonic() + timeout_s
    total = ls.project_counts(client, project=project).total
    done = ls.count_tasks_with_predictions(client, project=project)
    while done < total and time.monotonic() < deadline:
        time.sleep(2.0)
        done = ls.count_tasks_with_predictions(client, project=project)
    return done


def follow_serving_version(client: LabelStudioClient, *, project: int, model_version: str) -> None:
    """Make sure the project's ``model_version`` names the serving version, so "Review first" sorts by its scores.

    The backend's pre-labeling sets it after writing predictions; when Label Studio itself fetched them through
    ``/predict`` (opening a task without predictions does that), nothing was written and the project may still
    carry the ML backend's title. Setting it again is harmless.
    """
    from plugin import client as ls

    ls.ensure_project_model_version(client, project=project, model_version=model_version)


def ensure_port_free(port: int) -> None:
    """Refuse to start when something already listens on ``127.0.0.1:port``.

    Without this check the demo's own backend would fail to bind while ``/health`` was answered by the other
    server (e.g. an earlier demo's backend), and the demo would wire Label Studio to that one.

    Raises:
        RuntimeError: the port is taken (the message says how to go on).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(
                f"port {port} is already in use (another ctphase demo or serve?); stop it or pass --port"
            ) from None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (``kill``, ``timeout``, a service manager) into KeyboardInterrupt, so the demo's cleanup runs.

    The backend and Label Studio run in their own process groups; without this, SIGTERM would end the demo at
    once and leave both servers running.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(args: argparse.Namespace) -> int:
    """The ``demo`` handler (see the module docstring)."""
    try:
        ensure_port_free(args.port)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with sigterm_as_interrupt():
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    for noisy in ("httpx", "alembic"):  # one line per HTTP request / migration plugin is not what a demo shows
        logging.getLogger(noisy).setLevel(logging.WARNING)
    paths = DemoPaths(args.workdir.resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    ensure_phantoms(paths, per_phase=args.series_per_phase)
    label_studio = start_label_studio(args, paths) if args.with_label_studio else None
    ls_url = label_studio[0].url if label_studio is not None else None
    ls_token = label_studio[1].token if label_studio is not None else None
    settings = demo_settings(paths, port=args.port, ls_url=ls_url, ls_token=ls_token)
    backend: BackendProcess | None = None
    try:
        champion = ensure_starter_model(settings, paths, epochs=args.epochs)
        print(f"champion model: {champion}", flush=True)
        backend = BackendProcess(settings, port=args.port, log_path=paths.root / "backend.log")
        backend.wait_ready()
        lines = [
            f"ML backend    {backend.url}  (API docs {backend.url}/docs, log {backend.log_path})",
            f"admin token   {settings.admin_token.get_secret_value()}  (Authorization: Bearer ...; /admin/*)",
        ]
        if label_studio is not None and not _label_studio_ready(label_studio[0]):
            label_studio[0].stop()
            label_studio = None
        if label_studio is not None:
            server, credentials = label_studio
            project, view, client = wire_label_studio(settings, paths)
            n = wait_for_predictions(client, project=project)
            print(f"{n} tasks pre-labelled", flush=True)
            follow_serving_version(client, project=project, model_version=champion)
            lines.insert(0, f"Label Studio  {server.url}/projects/{project}/data?tab={view}  ('Review first' tab)")
            lines.insert(1, f"              login {credentials.email} / {credentials.password}")
        print("\nctphase demo is running:\n  " + "\n  ".join(lines) + "\nCtrl-C stops everything.", flush=True)
        _wait(backend, label_studio[0] if label_studio is not None else None)
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        stop_servers(backend, label_studio[0] if label_studio is not None else None)
    return 0


def stop_servers(backend: BackendProcess | None, label_studio: LocalLabelStudio | None) -> None:
    """Stop the demo's servers, ignoring SIGINT and SIGTERM meanwhile.

    An impatient second Ctrl-C, or a second SIGTERM (``timeout`` and ``kill`` both signalling), must not interrupt
    the shutdown half way and leave a server running (seen: the backend outlived a demo stopped that way).
    """
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if backend is not None:
            backend.stop()
        if label_studio is not None:
            label_studio.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _label_studio_ready(server: LocalLabelStudio) -> bool:
    from plugin.local_label_studio import LocalLabelStudioError

    try:
        server.wait_ready()
    except LocalLabelStudioError as error:
        print(f"Label Studio did not start ({error}); continuing with the backend only", file=sys.stderr)
        return False
    return True


def _wait(backend: BackendProcess, label_studio: LocalLabelStudio | None) -> None:
    """Block until Ctrl-C or until a server exits (then say which)."""
    while True:
        if backend.process.poll() is not None:
            print(f"ctphase serve exited:\n{backend.log_tail()}", file=sys.stderr)
            return
        if label_studio is not None and not label_studio.running:
            print(f"Label Studio exited:\n{label_studio.log_tail()}", file=sys.stderr)
            return
        time.sleep(1.0)
