"""Joining a multi-process (multi-host) run: `initialize(...)`, called before JAX makes devices.

One JAX process runs per host (or per GPU); together they form one data-parallel mesh over all
devices of all processes (`seg_jax.sharding`). Every process runs the same command; they find
each other through a coordinator, a small service that process 0 starts at an address all
processes can reach. A multi-process run is asked for in one of three ways (a flag wins over
its variable; detection fills in only what neither gives):

* flags: `--coordinator_address=host:port --num_processes=N --process_id=i` (all three);
* environment variables, the same three settings for launchers that set variables per process:

      SEG_JAX_COORDINATOR_ADDRESS   host:port of process 0's coordinator (any free port)
      SEG_JAX_NUM_PROCESSES         the number of processes N
      SEG_JAX_PROCESS_ID            this process's id, 0 .. N - 1 (0 runs the coordinator)
      SEG_JAX_DISTRIBUTED           'auto' or a detection method (as `--distributed`)
      SEG_JAX_DISTRIBUTED_TIMEOUT   seconds to wait for all processes (as `--distributed_timeout`)

* cluster detection: `--distributed=auto` lets JAX read the settings from the cluster it runs in
  (SLURM, Open MPI, Cloud TPU, Kubernetes); `--distributed=slurm` (or 'ompi', 'mpi4py', ...)
  names one method. Settings given by flag or variable take precedence over detected ones.

With none of these the run is a single process and nothing is initialised. All processes must
see the same --workdir (a shared filesystem): each writes its part of every checkpoint there,
while only process 0 writes the logs, metrics and results.

Waiting is bounded: if the coordinator does not answer, or not every process joins, within the
timeout, the process ends with `DistributedInitError`'s message naming the address, this
process's id and the timeout. (JAX itself would abort the process from C++ with a bare
DEADLINE_EXCEEDED, later and without saying what it waited for; a watchdog thread speaks first.)
"""

import dataclasses
import errno
import os
import socket
import sys
import threading
import time

ENV_COORDINATOR_ADDRESS = "SEG_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SEG_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SEG_JAX_PROCESS_ID"
ENV_DISTRIBUTED = "SEG_JAX_DISTRIBUTED"
ENV_TIMEOUT = "SEG_JAX_DISTRIBUTED_TIMEOUT"

DEFAULT_TIMEOUT_S = 300.0
# JAX is given this much longer than our own deadline, so that the watchdog's clear message
# (and exit) always comes before JAX's abort.
_JAX_TIMEOUT_MARGIN_S = 30
# Exit status of a process the watchdog ends (as sys.exit with a message).
TIMEOUT_EXIT_CODE = 1


class DistributedInitError(RuntimeError):
    """The distributed settings are inconsistent, or the processes could not join in time."""


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: `process_id` of `num_processes` (0 of 1 in a single-process
    run, where `coordinator_address` is None)."""

    process_id: int = 0
    num_processes: int = 1
    coordinator_address: str | None = None

    @property
    def is_primary(self) -> bool:
        """True on the process that writes the run's files and logs at INFO level."""
        return self.process_id == 0


def _from_env(name: str, parse=str):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        raise DistributedInitError(
            f"Environment variable {name}={raw!r} is not a valid {parse.__name__}.") from None


def resolve(coordinator_address=None, num_processes=None, process_id=None, *, method=None,
            timeout_s=None) -> dict | None:
    """The settings to initialise with (flags over environment variables), checked; or None for
    a single-process run. Raises DistributedInitError naming the setting that is wrong.

    Returns a dict with keys coordinator_address, num_processes, process_id (each possibly None
    under cluster detection), method (None or a detection method) and timeout_s.
    """
    address = coordinator_address or _from_env(ENV_COORDINATOR_ADDRESS)
    count = num_processes if num_processes is not None else _from_env(ENV_NUM_PROCESSES, int)
    pid = process_id if process_id is not None else _from_env(ENV_PROCESS_ID, int)
    method = (method or _from_env(ENV_DISTRIBUTED) or "").strip().lower() or None
    if method in ("off", "none", "no", "false", "0"):
        method = None
    timeout_s = timeout_s if timeout_s is not None else _from_env(ENV_TIMEOUT, float)
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)

    given = {"--coordinator_address": address, "--num_processes": count, "--process_id": pid}
    if method is None and all(v is None for v in given.values()):
        return None
    if not timeout_s > 0:
        raise DistributedInitError(f"--distributed_timeout must be positive, got {timeout_s}.")
    if method is None:
        missing = [name for name, v in given.items() if v is None]
        if missing:
            have = ", ".join(f"{n}={v}" for n, v in given.items() if v is not None)
            raise DistributedInitError(
                f"A multi-process run needs --coordinator_address, --num_processes and "
                f"--process_id together (or the variables {ENV_COORDINATOR_ADDRESS}, "
                f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); got {have} but not "
                f"{', '.join(missing)}. On a cluster JAX can detect (SLURM, Open MPI, TPU), "
                f"pass --distributed=auto instead.")
    if count is not None and count < 1:
        raise DistributedInitError(f"--num_processes must be at least 1, got {count}.")
    if pid is not None and pid < 0:
        raise DistributedInitError(f"--process_id must be >= 0, got {pid}.")
    if count is not None and pid is not None and pid >= count:
        raise DistributedInitError(
            f"--process_id={pid} is out of range for --num_processes={count}: process ids are "
            f"0 .. {count - 1}, and process 0 runs the coordinator.")
    if address is not None:
        _check_address(address)
    return {"coordinator_address": address, "num_processes": count, "process_id": pid,
            "method": method, "timeout_s": timeout_s}


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedInitError(
            f"--coordinator_address={address!r} must be host:port (e.g. 10.0.0.1:12345 or "
            f"localhost:12345) with a port in 1..65535 that is free on process 0's host.")
    return host.strip("[]"), int(port)


def _check_address(address: str) -> None:
    _split_address(address)


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
    """Whether anything accepts a TCP connection at `address` (for the timeout message)."""
    try:
        host, port = _split_address(address)
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except (OSError, DistributedInitError):
        return False


def _check_port_free(port: int) -> None:
    """Raises DistributedInitError if something on this host already listens on `port`.

    Process 0 binds the coordinator to every interface on that port; JAX crashes the process
    (a segmentation fault, no message) when the port is taken, e.g. by another run's coordinator.
    """
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host: try IPv4
        with probe:
            # Like the coordinator's server: a port left in TIME_WAIT by an earlier run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                probe.bind((host, port))
                probe.listen(1)
            except OSError as e:
                if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                    continue  # e.g. IPv6 disabled: the IPv4 probe decides
                raise DistributedInitError(
                    f"Process 0 cannot start the coordinator on port {port}: {e.strerror or e} "
                    f"(another run's coordinator?). Choose a free port in --coordinator_address "
                    f"for all processes.") from None
        return


def _timeout_message(settings: dict) -> str:
    address, pid = settings["coordinator_address"], settings["process_id"]
    count, timeout_s = settings["num_processes"], settings["timeout_s"]
    who = f"Process {pid if pid is not None else '?'} of {count if count is not None else '?'}"
    if pid == 0:
        cause = ("started the coordinator there, but not every process joined; check that all "
                 f"{count} processes were started with the same --coordinator_address and "
                 "--num_processes and distinct --process_id")
    elif address and _reachable(address):
        cause = ("reached the coordinator, but not every process joined; check that all "
                 "processes were started with the same --num_processes and distinct --process_id")
    else:
        cause = ("got no answer: is process 0 running, is the host name right, and is the port "
                 "open between the hosts")
    address = address or "the address detected from the cluster"
    return (f"{who} could not join the distributed run: the coordinator at {address} did not "
            f"complete the start-up within --distributed_timeout={timeout_s:g} s. It {cause}. "
            f"Raise --distributed_timeout if processes start slowly.")


def _set_cpu_collectives(jax) -> None:
    """Cross-process collectives on CPU need an implementation (older JAX has none by default);
    gloo needs nothing installed. A choice made through JAX's own variable is kept."""
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, method: str | None = None,
               timeout_s: float | None = None) -> ProcessInfo:
    """Joins the multi-process run the arguments (or SEG_JAX_* variables) ask for.

    Call it first, before anything asks JAX for devices; with no settings it does nothing and
    returns `ProcessInfo()` (process 0 of 1). `method` is 'auto' (JAX detects the cluster) or a
    JAX cluster detection method such as 'slurm'. `timeout_s` bounds the wait for the
    coordinator and the other processes (default 300 s).

    Raises DistributedInitError for inconsistent settings (before anything starts) or when JAX
    rejects them. If the processes do not all join within `timeout_s`, a watchdog writes the
    reason (address, process id, timeout) to stderr and ends the process with status 1: the
    wait happens inside JAX's C++ runtime, which no Python exception can interrupt.
    """
    settings = resolve(coordinator_address, num_processes, process_id, method=method,
                       timeout_s=timeout_s)
    if settings is None:
        return ProcessInfo()
    import jax

    if jax.distributed.is_initialized():  # e.g. a second call in a notebook: already joined
        return ProcessInfo(jax.process_index(), jax.process_count(),
                           settings["coordinator_address"])
    _set_cpu_collectives(jax)
    if (settings["process_id"] == 0 and settings["coordinator_address"]
            and not os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")):
        _check_port_free(_split_address(settings["coordinator_address"])[1])
    timeout_s = settings["timeout_s"]
    detection = None if settings["method"] in (None, "auto") else settings["method"]
    done = threading.Event()

    def watchdog():
        if not done.wait(timeout_s):
            sys.stderr.write(f"FATAL {_timeout_message(settings)}\n")
            sys.stderr.flush()
            os._exit(TIMEOUT_EXIT_CODE)

    threading.Thread(target=watchdog, name="distributed-init-watchdog", daemon=True).start()
    start = time.perf_counter()
    try:
        jax.distributed.initialize(
            coordinator_address=settings["coordinator_address"],
            num_processes=settings["num_processes"],
            process_id=settings["process_id"],
            cluster_detection_method=detection,
            initialization_timeout=int(timeout_s) + _JAX_TIMEOUT_MARGIN_S,
        )
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        # Settings JAX rejects or could not detect: no coordinator was reached.
        source = (f"cluster detection (--distributed={settings['method']})" if settings["method"]
                  else "the given settings")
        # A detector reading its cluster's variables raises KeyError naming the missing one.
        reason = (f"environment variable {e} is not set, so this is not such a cluster"
                  if isinstance(e, KeyError) else str(e).rstrip("."))
        pid = settings["process_id"]
        raise DistributedInitError(
            f"Could not initialise the distributed run from {source} (coordinator "
            f"{settings['coordinator_address'] or 'not given'}, process "
            f"{pid if pid is not None else 'not given'} of "
            f"{settings['num_processes'] or 'not given'}): {reason}. Outside a cluster JAX "
            f"detects, pass --coordinator_address, --num_processes and --process_id.") from e
    finally:
        done.set()
    info = ProcessInfo(jax.process_index(), jax.process_count(), settings["coordinator_address"])
    from absl import logging

    logging.info("Joined the distributed run as process %d of %d (coordinator %s) in %.1f s.",
                 info.process_id, info.num_processes,
                 info.coordinator_address or "detected from the cluster",
                 time.perf_counter() - start)
    return info
