"""Start the tritonserver binary bundled with nvidia-pytriton on a local model repository.

The wheel ships Triton with the Python backend only, so this serves the repository's local flavour
(ONNX Runtime on CPU inside Python-backend models). The launcher copies the Python backend and the
stub for this interpreter into a private backend directory, puts the wheel's libraries and the
interpreter's libpython on LD_LIBRARY_PATH and this environment's bin first on PATH (the stub finds
the venv's packages through the `python3` it sees there), binds loopback only, waits until ready
and always stops the server, its process group included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from serving import layout

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """tritonserver could not start, did not become ready, or died; the message holds the reason."""


@dataclass
class ServerConfig:
    repository: str  # an export output (its local/ flavour is used) or a model repository directory
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    load_models: tuple[str, ...] = ("*",)  # explicit model control: what to load at start
    ready_timeout_s: float = 300.0
    exit_timeout_s: int = 10  # grace for in-flight requests and model unloads on stop
    log_verbose: int = 0
    log_path: str | None = None  # server log file; a temporary file when None
    extra_args: list[str] = field(default_factory=list)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on `port` (SO_REUSEADDR as servers use: TIME_WAIT leftovers don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tritonserver_home() -> Path:
    """The tritonserver directory inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as err:
        raise ServerError("nvidia-pytriton is not installed; it provides the tritonserver binary") from err
    home = Path(pytriton.__file__).parent / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {home}")
    return home


def prepare_backend_dir(target: Path) -> Path:
    """Copy the bundled Python backend plus the stub built for this Python into `target`/python."""
    home = tritonserver_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    python_dir = target / "python"
    shutil.copytree(home / "backends" / "python", python_dir, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, python_dir / stub.name)
    return target


def server_env() -> dict[str, str]:
    """Environment for tritonserver: bundled libs + libpython on LD_LIBRARY_PATH, this venv first on PATH."""
    env = os.environ.copy()
    libs = Path(tritonserver_home()).parent.parent / "nvidia_pytriton.libs"
    lib_dirs = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
    # sys.executable, not its resolved target: the venv's bin holds pyvenv.cfg's python3.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def resolve_repository(path: str) -> Path:
    """The model repository to serve: `path` itself, or its local flavour when `path` is an export output."""
    root = Path(path)
    if (root / layout.LOCAL).is_dir():
        root = root / layout.LOCAL
    if not root.is_dir():
        raise ServerError(f"model repository {path} does not exist")
    if not any(p.joinpath("config.pbtxt").is_file() for p in root.iterdir() if p.is_dir()):
        raise ServerError(f"{root} holds no model (no <model>/config.pbtxt); export one with `kdrank export`")
    return root


class TritonServer:
    """One tritonserver process; use as a context manager (or `start()`/`stop()`)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self._process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._log_handle = None
        self.log_path: Path | None = None
        self.stop_requested = False  # True once stop() ended a running server (not a crash)
        self.ready_once = False

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def shm_prefix(self) -> str:
        """Prefix of this server's Python-backend shared-memory regions in /dev/shm (unique per server)."""
        return f"kdrank{os.getpid()}x{self.config.grpc_port}_"

    @property
    def pid(self) -> int | None:
        """tritonserver's process id, also its process group (the Python backend stubs belong to it)."""
        return self._process.pid if self._process is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    def command(self, repository: Path, backend_dir: Path) -> list[str]:
        cfg = self.config
        prefix = self.shm_prefix
        args = [
            str(tritonserver_home() / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backend_dir}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in cfg.load_models),
            "--strict-readiness=true",
            f"--exit-timeout-secs={cfg.exit_timeout_s}",
            f"--http-address={cfg.host}", f"--http-port={cfg.http_port}",
            f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
            f"--backend-config=python,shm-region-prefix-name={prefix}",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--log-verbose={cfg.log_verbose}",
            *cfg.extra_args,
        ]
        return args

    def start(self) -> TritonServer:
        cfg = self.config
        ports = {"http": cfg.http_port, "grpc": cfg.grpc_port, "metrics": cfg.metrics_port}
        for name, port in ports.items():
            if port_in_use(cfg.host, port):
                raise ServerError(f"{name} port {port} on {cfg.host} is already in use; "
                                  f"choose another with --{name}-port")
        repository = resolve_repository(cfg.repository)
        self._workdir = tempfile.TemporaryDirectory(prefix="kdrank-triton-")
        try:  # stop() gives back whatever was set up when a step fails: the work folder, the log handle
            backend_dir = prepare_backend_dir(Path(self._workdir.name) / "backends")
            self.log_path = Path(cfg.log_path or Path(self._workdir.name) / "tritonserver.log")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            command = self.command(repository, backend_dir)
            log.info("starting tritonserver on %s (http %d, grpc %d, metrics %d), repository %s, log %s",
                     cfg.host, cfg.http_port, cfg.grpc_port, cfg.metrics_port, repository, self.log_path)
            self._process = subprocess.Popen(command, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=server_env(), start_new_session=True)
        except BaseException:
            self.stop()
            raise
        try:
            self.wait_ready(cfg.ready_timeout_s)
        except ServerError as err:
            self.stop()  # keeps the log of a failed start
            raise ServerError(f"{err}\n(full log: {self.log_path})") from None
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self._process.returncode} before it was "
                                  f"ready:\n{self.failure_summary()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        self.ready_once = True
                        log.info("tritonserver ready at http://%s and grpc %s", self.http_url, self.grpc_url)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s:\n{self.failure_summary()}")

    def logs(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def failure_summary(self, tail: int = 30) -> str:
        """Error lines (failed model loads, bind errors) or else the log tail, for error messages."""
        lines = self.logs().splitlines()
        errors = [ln for ln in lines if ln.startswith("E") or "failed to load" in ln or "UNAVAILABLE" in ln]
        chosen = errors[-tail:] if errors else lines[-tail:]
        return "\n".join(chosen)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C stops it cleanly); returns its exit code."""
        try:
            return self._process.wait()
        except KeyboardInterrupt:
            log.info("stopping tritonserver")
            return self.stop()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL for the whole process group (Python backend stubs) after the grace time."""
        process, code = self._process, None
        if process is not None:
            if process.poll() is None:
                self.stop_requested = True
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.config.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not exit in time; killing it")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
            self._process = None
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # left by stubs killed mid-unload
                region.unlink(missing_ok=True)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir is not None:
            failed = not self.ready_once or code not in (0, None)
            if failed and self.config.log_path is None and self.log_path is not None:  # keep it to debug
                keep = Path(tempfile.gettempdir(),
                            f"kdrank-tritonserver-{os.getpid()}-{self.config.grpc_port}.log")
                with contextlib.suppress(OSError):
                    shutil.copy(self.log_path, keep)
                    self.log_path = keep
            self._workdir.cleanup()
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serve(repository: str, **options) -> Iterator[TritonServer]:
    """Run tritonserver on `repository` (a local path) for the block's duration; options: ServerConfig."""
    with TritonServer(ServerConfig(repository=str(repository), **options)) as server:
        yield server
