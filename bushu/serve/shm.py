"""Triton's system shared-memory extension: tensors pass through a POSIX shared-memory region, not the socket.

A client on the same machine creates a region (``tritonclient.utils.shared_memory``: ``shm_open`` under
``/dev/shm``), registers it under a name (``POST /v2/systemsharedmemory/region/{name}/register`` with ``key``,
``offset``, ``byte_size``, or gRPC ``SystemSharedMemoryRegister``), and then names it in an inference request: an
input with ``parameters.shared_memory_region`` / ``shared_memory_byte_size`` / ``shared_memory_offset`` is read from
the region (a zero-copy numpy view of the mapping), and a requested output with the same parameters is written into
it (the answer then carries the output's datatype and shape, no data). As in Triton: the status is a list of
``{name, key, offset, byte_size}``; a name can be registered once; several names may map the same key (each its own
``MAP_SHARED`` mapping of the same memory); unregistering an unknown name is not an error; a region unregistered
while a request still uses it stays mapped until that request lets go of it (numpy views keep the mapping alive).

Safety, beyond Triton: a key must be a POSIX shared-memory name (``/name``, one component) of a regular file under
``/dev/shm`` owned by the server's user (opened without following links); offsets and sizes are bounds-checked at
registration and on every use (the file's size is checked again, so a region truncated behind the server's back is
refused, not read past its end); and only clients on loopback may register or use regions unless the server runs
with ``--allow-shared-memory`` (and then, with ``--token``, they need the bearer token). CUDA shared memory is not
supported: its endpoints answer 400.

Under ``--ray`` the ingress keeps the registry (it answers the register/unregister/status calls, HTTP and, forwarded by
the driver, gRPC) and each model replica mirrors it: a forwarded infer request carries the registry's
:meth:`SharedMemory.snapshot` (names, keys, bounds and a serial per registration), and the replica maps what changed
since the last one (:meth:`SharedMemory.mirror`) before it reads a tensor, so a region registered or unregistered
before a request is seen by it. Replicas map the same ``/dev/shm`` file only on the machine where it was registered:
a replica on another machine of a Ray cluster (other boot id or host name) refuses the regions with that reason.
"""

from __future__ import annotations

import dataclasses
import hmac
import mmap
import os
import re
import socket
import stat
import threading

import numpy as np

from .protocol import DATATYPES, ProtocolError, deserialize_bytes

SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/?[^/\x00]{1,255}")
PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclasses.dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    mm: mmap.mmap
    view: memoryview  # the registered bytes [offset, offset + byte_size) of the key
    serial: int = 0  # this registration's number in its registry (a name registered again gets a new one)

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def release(self) -> None:
        """Close the file and unmap, unless a request still holds a view (then the mapping goes with the view)."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            self.view.release()
            self.mm.close()
        except BufferError:  # exported to an in-flight request's arrays: unmapped when they are freed
            pass


def _is_loopback(host) -> bool:
    if not host:
        return False
    from .server import is_loopback

    return is_loopback(host.split("%")[0])


def machine_id() -> str:
    """Which machine (and boot) this process runs on: processes with the same id see the same ``/dev/shm``."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


class SharedMemory:
    """The registered system shared-memory regions of one server (thread-safe: gRPC and HTTP share it)."""

    def __init__(self, *, allow_remote: bool = False, token: str | None = None):
        self.allow_remote, self.token = allow_remote, token
        self.regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        self._serial = 0
        self._snapshot: tuple | None = None  # cached snapshot(), dropped on every change
        self._mirrored: tuple | None = None  # the last snapshot mirror() applied
        self._refused: dict[str, str] = {}  # region -> why this mirror could not map it
        self._origin_serial: dict[str, int] = {}  # region -> its serial in the registry this one mirrors

    # ------------------------------------------------------------ who may
    def check_client(self, host: str | None, authorization: str | None = None) -> None:
        """Raise 403/401 unless a client at ``host`` may register or use regions."""
        if _is_loopback(host):
            return
        if not self.allow_remote:
            raise ProtocolError("system shared memory is for clients on the server's machine (loopback); start the "
                                "server with --allow-shared-memory to allow it from other addresses", status=403)
        if self.token and not hmac.compare_digest((authorization or "").encode(), f"Bearer {self.token}".encode()):
            raise ProtocolError("system shared memory from beyond loopback needs 'Authorization: Bearer <token>' "
                                "with the server's --token", status=401)

    # ------------------------------------------------------------ register / unregister / status
    def register(self, name: str, key, offset, byte_size) -> None:
        if not name:
            raise ProtocolError("a region name is needed to register system shared memory")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.strip("/") in (".", ".."):
            raise ProtocolError(f"system shared memory key {key!r} is not a POSIX shared-memory name: use '/name' "
                                "(one path component, as shm_open and tritonclient.utils.shared_memory take it)")
        for what, v in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ProtocolError(f"system shared memory region '{name}': {what} must be a non-negative integer, "
                                    f"got {v!r}")
        if byte_size == 0:
            raise ProtocolError(f"system shared memory region '{name}': byte_size must be over 0")
        with self._lock:
            if name in self.regions:
                raise ProtocolError(f"shared memory region '{name}' is already registered: unregister it first, or "
                                    "use another name")
            path = os.path.join(SHM_DIR, key.lstrip("/"))
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise ProtocolError(f"can't open system shared memory '{key}' ({e.strerror}): create it first "
                                    f"(tritonclient.utils.shared_memory.create_shared_memory_region)") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ProtocolError(f"system shared memory '{key}' is not a shared-memory object")
                if st.st_uid != os.geteuid():
                    raise ProtocolError(f"system shared memory '{key}' belongs to another user: create it as the "
                                        "user the server runs as")
                if offset + byte_size > st.st_size:
                    raise ProtocolError(f"system shared memory region '{name}': offset {offset} + byte_size "
                                        f"{byte_size} is past the end of '{key}' ({st.st_size} bytes)")
                start = offset - offset % mmap.ALLOCATIONGRANULARITY
                mm = mmap.mmap(fd, offset + byte_size - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=start)
            except BaseException:
                os.close(fd)
                raise
            view = memoryview(mm)[offset - start:]
            self._serial += 1
            self.regions[name] = Region(name, key, offset, byte_size, fd, mm, view, self._serial)
            self._snapshot = None

    def unregister(self, name: str = "") -> None:
        """Unregister ``name`` (every region when empty); an unknown name is not an error (Triton's behaviour)."""
        with self._lock:
            gone = list(self.regions.values()) if not name else [r for r in [self.regions.get(name)] if r]
            for r in gone:
                del self.regions[r.name]
            self._snapshot = None
        for r in gone:
            r.release()

    def status(self, name: str = "") -> list[dict]:
        with self._lock:
            if not name:
                return [r.status() for r in self.regions.values()]
            r = self.regions.get(name)
        if r is None:
            raise ProtocolError(f"Unable to find system shared memory region: '{name}'", status=404)
        return [r.status()]

    def close(self) -> None:
        self.unregister()

    # ------------------------------------------------------------ --ray: the ingress's registry, mirrored by replicas
    def snapshot(self) -> tuple:
        """``(machine id, ((name, key, offset, byte_size, serial), ...))``: what a replica needs to mirror the
        registry (cached until the next change)."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = (machine_id(), tuple((r.name, r.key, r.offset, r.byte_size, r.serial)
                                                      for r in self.regions.values()))
            return self._snapshot

    def mirror(self, snapshot: tuple) -> None:
        """Map exactly the registrations of another registry's :meth:`snapshot` (a no-op when it is the last one
        applied): gone or re-registered names are unmapped, new ones mapped. A region this process can't map (its
        file removed since, or this process on another machine) is refused when a request names it, with the reason."""
        if snapshot == self._mirrored:
            return
        origin, entries = snapshot
        want = {e[0]: e for e in entries}
        with self._lock:
            mapped = {name: (r.name, r.key, r.offset, r.byte_size, self._origin_serial.get(name))
                      for name, r in self.regions.items()}
        for name, e in mapped.items():
            if want.get(name) != e:
                self.unregister(name)
                self._origin_serial.pop(name, None)
        self._refused = {}
        here = machine_id()
        for name, e in want.items():
            if mapped.get(name) == e:
                continue
            if origin != here:
                self._refused[name] = (f"this --ray replica runs on another machine ({here.split('/')[0]}) than the "
                                       f"server where region '{name}' was registered ({origin.split('/')[0]}): shared "
                                       "memory needs every replica on the client's machine")
                continue
            try:
                self.register(*e[:4])
                self._origin_serial[name] = e[4]
            except ProtocolError as err:
                self._refused[name] = f"region '{name}' can't be mapped here: {err}"
        self._mirrored = snapshot

    def for_client(self, host: str | None, authorization: str | None = None) -> _ClientRegions:
        """This registry as a request from ``host`` may use it (the client is checked on first use)."""
        return _ClientRegions(self, host, authorization)

    # ------------------------------------------------------------ tensors
    def _span(self, region: str, offset, byte_size, what: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of ``region`` (bounds-checked, and the file still that long)."""
        if not isinstance(region, str):
            raise ProtocolError(f"{what}: shared_memory_region must be a string")
        for k, v in (("shared_memory_offset", offset), ("shared_memory_byte_size", byte_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ProtocolError(f"{what}: {k} must be a non-negative integer, got {v!r}")
        with self._lock:
            r = self.regions.get(region)
            if r is None and region in self._refused:
                raise ProtocolError(f"{what}: {self._refused[region]}")
            if r is None:
                raise ProtocolError(f"{what}: no system shared memory region '{region}' is registered "
                                    "(POST /v2/systemsharedmemory/region/{name}/register first)")
            if offset + byte_size > r.byte_size:
                raise ProtocolError(f"{what}: offset {offset} + byte size {byte_size} is past the end of shared "
                                    f"memory region '{region}' ({r.byte_size} bytes)")
            try:
                size = os.fstat(r.fd).st_size
            except OSError:
                size = -1
            if r.offset + offset + byte_size > size:
                raise ProtocolError(f"{what}: shared memory region '{region}' shrank to {max(size, 0)} bytes of "
                                    f"'{r.key}' after it was registered: register it again")
            return r.view[offset:offset + byte_size]

    def input(self, name: str, datatype: str, shape: tuple[int, ...], params: dict) -> np.ndarray:
        """Input ``name`` read from the region its parameters name (zero-copy for every datatype but BYTES)."""
        what = f"input '{name}'"
        size = params.get("shared_memory_byte_size")
        span = self._span(params.get("shared_memory_region"), params.get("shared_memory_offset", 0), size, what)
        count = int(np.prod(shape, dtype=np.int64))
        if datatype == "BYTES":
            return deserialize_bytes(span, count, name).reshape(shape)
        want = count * DATATYPES[datatype].itemsize
        if size != want:
            raise ProtocolError(f"{what}: shared_memory_byte_size is {size} but {datatype}{list(shape)} needs {want} "
                                "bytes")
        return np.frombuffer(span, dtype=DATATYPES[datatype]).reshape(shape)

    def output(self, name: str, params: dict) -> memoryview:
        """Where output ``name`` goes: the bytes its parameters name (checked now, before the model runs)."""
        return self._span(params.get("shared_memory_region"), params.get("shared_memory_offset", 0),
                          params.get("shared_memory_byte_size"), f"output '{name}'")


class _ClientRegions:
    __slots__ = ("authorization", "checked", "host", "shm")

    def __init__(self, shm: SharedMemory, host, authorization):
        self.shm, self.host, self.authorization, self.checked = shm, host, authorization, False

    def _check(self) -> SharedMemory:
        if not self.checked:
            self.shm.check_client(self.host, self.authorization)
            self.checked = True
        return self.shm

    def input(self, *args) -> np.ndarray:
        return self._check().input(*args)

    def output(self, *args) -> memoryview:
        return self._check().output(*args)


def write_output(target: memoryview, name: str, arr: np.ndarray) -> None:
    """Copy output ``name`` into its shared-memory ``target`` (BYTES as length-prefixed elements)."""
    from .protocol import serialize_bytes

    if arr.dtype == object or arr.dtype.kind in "SU":
        raw = serialize_bytes(arr)
        if len(raw) > len(target):
            raise ProtocolError(f"output '{name}' is {len(raw)} bytes, over its shared_memory_byte_size "
                                f"{len(target)}", status=400)
        target[:len(raw)] = raw
        return
    if arr.nbytes > len(target):
        raise ProtocolError(f"output '{name}' ({arr.dtype}{list(arr.shape)}) is {arr.nbytes} bytes, over its "
                            f"shared_memory_byte_size {len(target)}", status=400)
    np.copyto(np.frombuffer(target, dtype=arr.dtype, count=arr.size).reshape(arr.shape), arr, casting="no")
