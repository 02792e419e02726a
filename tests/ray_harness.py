"""A real multi-node Ray cluster on one machine, reachable on loopback only.

A test harness, not part of the plugin: used by the Ray tests and benchmark
(``tests/test_ray.py``, ``benchmarks/bench_ray.py``), and handy for trying
``serve_on_ray`` / ``label_on_ray`` without a real cluster. Production code
connects with ``spacy_distill.ray_connect.connect``.

Why a private network namespace: Ray 2.60 cannot be kept on loopback by its
own flags. ``ray start --node-ip-address 127.0.0.1`` rewrites a loopback
address to the machine's routable IP (``services.resolve_ip_for_localhost``),
and the GCS and raylet gRPC servers always listen on ``0.0.0.0`` whatever the
node IP. So the cluster is started inside a fresh network namespace whose only
interface is ``lo``: everything Ray binds, on any address, is then reachable
from that namespace's loopback and nowhere else, and the node IP Ray picks is
127.0.0.1. The namespace is entered by the calling *thread* (Linux namespaces
are per thread); processes and threads it starts inherit it, and the thread
returns to its old namespace on exit. It needs root (CAP_SYS_ADMIN), as a CI
runner on this machine kind has.

The cluster is stopped by signalling exactly the processes it started (the
processes in its own namespace, or failing that those whose command line names
its own temp dir, and their descendants), never with ``ray stop``, which would
stop every Ray process on the machine.
"""

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Set

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# struct ifreq: 16 bytes of name, then a union padded to 24 bytes.
_IFREQ = "16sH22x"


class NamespaceError(OSError):
    """A private network namespace could not be entered (not root, no CAP_SYS_ADMIN)."""


def _netns_inode(pid: str = "thread-self") -> Optional[int]:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


@contextlib.contextmanager
def private_network_namespace() -> Iterator[int]:
    """Move the calling thread into a new network namespace with only ``lo`` up.

    Threads and processes started from this thread while inside inherit the
    namespace. On exit the thread returns to the namespace it came from; the
    private one disappears once nothing uses it any more.

    YIELDS (int): The inode of the new namespace (``/proc/PID/ns/net``), which
        identifies every process started inside it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        old = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    except OSError as err:
        raise NamespaceError(f"cannot open this thread's network namespace: {err}") from err
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NamespaceError(errno, f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)}")
        try:
            # A new namespace starts with lo down: nothing, not even 127.0.0.1, would work.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                ifr = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
                flags = struct.unpack(_IFREQ, ifr)[1]
                fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))
            inode = _netns_inode()
            assert inode is not None
            yield inode
        finally:
            if libc.setns(old, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise NamespaceError(errno, f"setns back failed: {os.strerror(errno)}")
    finally:
        os.close(old)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (in the calling thread's namespace) a moment ago.

    RETURNS (int): The port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_table() -> Dict[int, "tuple[int, str, Optional[int]]"]:
    """pid -> (ppid, command line, network namespace inode), for live processes."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            # The command name may contain spaces and parentheses: split after the last ')'.
            fields = stat[stat.rindex(")") + 2 :].split()
            state, ppid = fields[0], int(fields[1])
            if state == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, ValueError):
            continue
        table[int(entry)] = (ppid, cmdline, _netns_inode(entry))
    return table


def _descendants(table: Dict[int, "tuple[int, str, Optional[int]]"], roots: Set[int]) -> Set[int]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


class LocalRayCluster:
    """A head node and ``n_workers`` worker nodes started with ``ray start``.

    Each node is a separate raylet with its own ports and resources, so Ray
    schedules across them exactly as across hosts. Call inside
    :func:`private_network_namespace` to keep everything on loopback.

    num_cpus (int): Logical CPUs per node.
    n_workers (int): Worker nodes besides the head.
    temp_dir (Optional[str]): Ray's root temp dir. Keep it short: Ray puts
        Unix sockets under it and socket paths are limited to 107 bytes.
    netns (Optional[int]): Inode of the private namespace the cluster runs in,
        used to find its processes when stopping.
    """

    def __init__(
        self,
        num_cpus: int = 1,
        n_workers: int = 1,
        temp_dir: Optional[str] = None,
        netns: Optional[int] = None,
    ) -> None:
        self.num_cpus = num_cpus
        self.n_workers = n_workers
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="ray-sd-", dir="/tmp")
        self.netns = netns
        # Every port handed out, so no two components get the same one: a port
        # closed a moment ago can come back from the next bind(0) (seen in CI:
        # the GCS and a dashboard agent were given the same port).
        self._ports: Set[int] = set()
        self.port = self._port()
        self.address = f"127.0.0.1:{self.port}"
        self.log: List[str] = []
        self._own_netns = netns is not None and netns != _netns_inode("1")

    def _port(self) -> int:
        while True:
            port = free_port()
            if port not in self._ports:
                self._ports.add(port)
                return port

    def _node_ports(self, head: bool) -> List[str]:
        # Two raylets on one host must not share any port: give each its own.
        args = [
            "--node-manager-port",
            str(self._port()),
            "--object-manager-port",
            str(self._port()),
            "--dashboard-agent-listen-port",
            str(self._port()),
            "--dashboard-agent-grpc-port",
            str(self._port()),
            "--runtime-env-agent-port",
            str(self._port()),
            "--metrics-export-port",
            str(self._port()),
        ]
        if head:
            args += ["--ray-client-server-port", str(self._port())]
        return args

    def _ray_start(self, args: List[str], timeout: float) -> None:
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", *args]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        self.log.append(" ".join(cmd) + "\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{self.log[-1]}")

    def start(self, timeout: float = 120.0) -> "LocalRayCluster":
        """Start the head and the worker nodes.

        timeout (float): Longest each ``ray start`` may take.
        RETURNS (LocalRayCluster): self.
        """
        common = [
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(self.num_cpus),
            "--num-gpus",
            "0",
            "--temp-dir",
            self.temp_dir,
            "--disable-usage-stats",
        ]
        try:
            self._ray_start(
                ["--head", "--port", str(self.port), "--include-dashboard=false"]
                + common
                + self._node_ports(head=True),
                timeout,
            )
            for _ in range(self.n_workers):
                self._ray_start(
                    ["--address", self.address] + common + self._node_ports(head=False), timeout
                )
        except BaseException:
            self.stop()
            raise
        return self

    def own_pids(self) -> Set[int]:
        """The live processes of this cluster.

        RETURNS (Set[int]): Their process ids (never this process's).
        """
        table = _proc_table()
        me = os.getpid()
        if self._own_netns:
            roots = {pid for pid, (_, _, ns) in table.items() if ns == self.netns}
        else:
            roots = {pid for pid, (_, cmd, _) in table.items() if self.temp_dir in cmd}
        return _descendants(table, roots) - {me}

    def stop(self, grace: float = 10.0, remove_temp_dir: bool = True) -> None:
        """Stop every process of the cluster: SIGTERM, then SIGKILL after ``grace`` s.

        grace (float): Seconds to wait between the two signals.
        remove_temp_dir (bool): Delete the temp dir (session logs) afterwards.
        """
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            pids = self.own_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = self.own_pids()
            if not pids:
                break
        if remove_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
