"""A local, headless Label Studio in its own virtual environment (``ctphase demo`` and the end-to-end tests).

Label Studio pins its own Django stack and ``label-studio-sdk``, so it is installed into a separate venv
(default ``.cache/label-studio-venv``) and run as a child process. The environment it gets follows what was
verified against 1.23.2:

- ``LABEL_STUDIO_BASE_DATA_DIR`` (not ``--data-dir``, which still writes under ``~/.local/share``);
- the first user and its legacy token from ``LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN`` with
  ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`` (only honoured when the data dir is new);
- both ``ML_BLOCK_LOCAL_IP=false`` and ``SSRF_PROTECTION_ENABLED=false`` so it may call a backend on 127.0.0.1;
- ``LOCAL_FILES_SERVING_ENABLED=true`` + ``LOCAL_FILES_DOCUMENT_ROOT`` when previews are served as local files.

The first start of a fresh data dir runs the migrations (30-40 s on 2 cores); a migrated data dir starts in ~5 s,
so tests keep a migrated template and copy it per run (:func:`copy_data_dir`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import httpx

logger = logging.getLogger(__name__)

LABEL_STUDIO_VERSION: Final[str] = "1.23.2"
DEFAULT_VENV: Final[Path] = Path(".cache/label-studio-venv")
DEFAULT_PORT: Final[int] = 8089
DATABASE_FILE: Final[str] = "label_studio.sqlite3"
_INHERITED_PREFIXES_DROPPED: Final[tuple[str, ...]] = ("LABEL_STUDIO_", "DJANGO_", "CTPHASE_")


class LocalLabelStudioError(RuntimeError):
    """Installing or starting the local Label Studio failed (the message carries the tail of its output)."""


@dataclass(frozen=True)
class Credentials:
    """The first Label Studio user and its legacy API token (40 hex characters)."""

    email: str
    password: str
    token: str

    @classmethod
    def generate(cls, email: str = "admin@example.com") -> Credentials:
        """Random password and token."""
        return cls(email=email, password=secrets.token_urlsafe(12), token=secrets.token_hex(20))

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """Read credentials saved by a previous run, or generate and save new ones (file mode 0600)."""
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(email=str(data["email"]), password=str(data["password"]), token=str(data["token"]))
        created = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(created.__dict__, indent=2), encoding="utf-8")
        path.chmod(0o600)
        return created


def venv_executable(venv: Path) -> Path:
    """The ``label-studio`` console script of a venv."""
    return venv / "bin" / "label-studio"


def installed_version(venv: Path) -> str | None:
    """Version of ``label-studio`` installed in ``venv``, or None."""
    python = venv / "bin" / "python"
    if not python.is_file() or not venv_executable(venv).is_file():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_installed(
    venv: Path = DEFAULT_VENV, *, version: str = LABEL_STUDIO_VERSION, python: str | None = None
) -> Path:
    """Install ``label-studio==version`` into its own venv unless it is there; returns the executable.

    Takes about a minute and 1 GB the first time (needs access to PyPI).

    Raises:
        LocalLabelStudioError: venv creation or pip failed (with pip's last output lines).
    """
    if installed_version(venv) == version:
        return venv_executable(venv)
    logger.info("installing label-studio==%s into %s (about a minute)", version, venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base_python = python or sys.executable
    steps = (
        [base_python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"label-studio=={version}"],
    )  # fmt: skip
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise LocalLabelStudioError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}):\n{tail}")
    return venv_executable(venv)


def label_studio_env(
    *,
    data_dir: Path,
    url: str,
    files_root: Path | None,
    credentials: Credentials | None,
    inherited: Mapping[str, str],
) -> dict[str, str]:
    """The child environment of a local Label Studio (see the module docstring).

    Args:
        data_dir: LABEL_STUDIO_BASE_DATA_DIR.
        url: its public URL (LABEL_STUDIO_HOST).
        files_root: LOCAL_FILES_DOCUMENT_ROOT, or None to keep local file serving off.
        credentials: the first user (set only for a new data dir; Label Studio prompts when a username comes
            without a password).
        inherited: the parent environment; ``LABEL_STUDIO_*``, ``DJANGO_*`` and ``CTPHASE_*`` entries are dropped.
    """
    env = {k: v for k, v in inherited.items() if not k.startswith(_INHERITED_PREFIXES_DROPPED)}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_HOST=url,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # noqa: S106  (a flag, not a password)
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        COLLECT_ANALYTICS="false",
        LATEST_VERSION_CHECK="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LOCAL_FILES_SERVING_ENABLED="true" if files_root is not None else "false",
    )
    if files_root is not None:
        env["LOCAL_FILES_DOCUMENT_ROOT"] = str(files_root)
    if credentials is not None:
        env.update(
            LABEL_STUDIO_USERNAME=credentials.email,
            LABEL_STUDIO_PASSWORD=credentials.password,
            LABEL_STUDIO_USER_TOKEN=credentials.token,
        )
    return env


def copy_data_dir(template: Path, target: Path) -> None:
    """Copy a migrated data dir (the template) to ``target`` (which must not exist)."""
    shutil.copytree(template, target, symlinks=True)


class LocalLabelStudio:
    """A Label Studio server process on 127.0.0.1 (context manager: started on enter, stopped on exit).

    Args:
        executable: the ``label-studio`` script of its venv (:func:`ensure_installed`).
        data_dir: its data dir (created when missing).
        port: listen port.
        credentials: the first user; applied only when ``data_dir`` holds no database yet.
        files_root: LOCAL_FILES_DOCUMENT_ROOT (previews), or None.
        log_path: file receiving its stdout and stderr (default ``<data_dir>/label-studio.log``).
        inherited_env: the parent environment passed through (minus Label Studio/ctphase variables).
    """

    def __init__(
        self,
        *,
        executable: Path,
        data_dir: Path,
        port: int,
        credentials: Credentials,
        files_root: Path | None = None,
        log_path: Path | None = None,
        inherited_env: Mapping[str, str] | None = None,
    ) -> None:
        self.executable = executable
        self.data_dir = data_dir
        self.port = port
        self.credentials = credentials
        self.files_root = files_root
        self.log_path = log_path or data_dir / "label-studio.log"
        self._inherited = dict(os.environ if inherited_env is None else inherited_env)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8089``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def is_new(self) -> bool:
        """True while the data dir has no database (the next start migrates and creates the user)."""
        return not (self.data_dir / DATABASE_FILE).is_file()

    def start(self) -> None:
        """Start the server process (returns at once; see :meth:`wait_ready`)."""
        if self._process is not None:
            raise LocalLabelStudioError("this Label Studio is already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.files_root is not None:
            self.files_root.mkdir(parents=True, exist_ok=True)
        env = label_studio_env(
            data_dir=self.data_dir,
            url=self.url,
            files_root=self.files_root,
            credentials=self.credentials if self.is_new else None,
            inherited=self._inherited,
        )
        command = [str(self.executable), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        command += ["--port", str(self.port)]
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.data_dir,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Poll ``GET /health`` until it answers ``UP``.

        Raises:
            LocalLabelStudioError: the process exited or the timeout passed (with the log's last lines).
        """
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise LocalLabelStudioError(f"Label Studio exited during start-up:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.url}/health").json().get("status") == "UP":
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.5)
        raise LocalLabelStudioError(f"Label Studio not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server and its children (SIGTERM to its own process group, SIGKILL after ``timeout_s``)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log."""
        if not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalLabelStudio:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m plugin.local_label_studio install|start``: see ``scripts/label_studio.sh``."""
    parser = argparse.ArgumentParser(prog="python -m plugin.local_label_studio")
    parser.add_argument("action", choices=("install", "start"))
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/label-studio-data"))
    parser.add_argument("--files-root", type=Path, default=None, help="LOCAL_FILES_DOCUMENT_ROOT (previews)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        executable = ensure_installed(args.venv)
        if args.action == "install":
            print(executable)
            return 0
        data_dir = args.data_dir.resolve()
        credentials = Credentials.load_or_create(data_dir.parent / f"{data_dir.name}.credentials.json")
        files_root = args.files_root.resolve() if args.files_root is not None else None
        server = LocalLabelStudio(
            executable=executable, data_dir=data_dir, port=args.port, credentials=credentials, files_root=files_root
        )
        with server:
            print(f"Label Studio {server.url}  user {credentials.email}  password {credentials.password}")
            print(f"API token {credentials.token}  (log: {server.log_path}; Ctrl-C stops it)")
            while server.running:
                time.sleep(1.0)
    except LocalLabelStudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
