"""The live models: load, unload and reload versions without dropping a request.

Engine sessions open in a worker thread, so the event loop keeps answering while a model loads. A new version
replaces the old in one assignment on the event loop, after it is ready; requests already holding the old version
finish on it (its scheduler drains before it closes). A version that fails to load leaves the old one serving, with
the reason in the repository index. :meth:`ModelManager.poll` does the same whenever a model's files change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from ..errors import BushuError
from .batcher import Batcher, BatchPolicy
from .config import ModelDefaults, read_engine_section
from .model import ModelVersion
from .protocol import ProtocolError
from .repository import ModelSource, Repository
from .sequence import Sequencer
from .stats import ModelStats

log = logging.getLogger("bushu.serve")


@dataclasses.dataclass(eq=False)
class LoadedVersion:
    model: ModelVersion
    scheduler: Batcher | Sequencer
    stats: ModelStats


@dataclasses.dataclass(eq=False)
class Entry:
    versions: dict[str, LoadedVersion]
    fingerprint: tuple = ()
    state: str = "READY"  # READY | UNAVAILABLE (unloaded or failed)
    reason: str = ""


def _open_versions(source: ModelSource, defaults: ModelDefaults) -> list[ModelVersion]:
    """Open every version of ``source`` (blocking: runs in a worker thread)."""
    section = read_engine_section(source.folder, defaults) if source.folder else read_engine_section(
        source.versions["1"].parent / "__none__", defaults)
    out = []
    for version, path in source.versions.items():
        cfg = type(source.config)()
        cfg.CopyFrom(source.config)
        out.append(ModelVersion(source.name, version, path, cfg, section, configured=source.configured,
                                defaults=defaults))
    return out


class ModelManager:
    """Every model of ``repository``, by name and version."""

    def __init__(self, repository: Repository, defaults: ModelDefaults = ModelDefaults()):
        self.repository = repository
        self.defaults = defaults
        self.entries: dict[str, Entry] = {}
        self._lock = asyncio.Lock()

    def _scheduler(self, mv: ModelVersion, stats: ModelStats):
        if mv.config.HasField("sequence_batching"):
            return Sequencer(mv, stats, max_queue_size=self.defaults.max_queue_size)
        return Batcher(mv, BatchPolicy.of(mv.config, self.defaults.max_queue_size), stats)

    async def load(self, name: str) -> None:
        """Load (or reload) model ``name`` from the repository; raises :class:`BushuError` when it can't, leaving
        the versions that serve now in place."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                source = self.repository.source(name)
                models = await loop.run_in_executor(None, _open_versions, source, self.defaults)
            except BushuError as e:
                entry = self.entries.setdefault(name, Entry({}, state="UNAVAILABLE"))
                entry.fingerprint = self.repository.fingerprint(name)
                entry.reason = str(e)
                if not entry.versions:
                    entry.state = "UNAVAILABLE"
                raise
            old = self.entries.get(name)
            self.entries[name] = Entry({m.version: LoadedVersion(m, self._scheduler(m, s := ModelStats()), s)
                                        for m in models}, source.fingerprint)
            if old:
                await self._retire(old)

    async def _retire(self, entry: Entry) -> None:
        for lv in entry.versions.values():
            await lv.scheduler.close()

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        async with self._lock:
            entry = self.entries.get(name)
            if entry is None or not entry.versions:
                raise ProtocolError(f"model '{name}' is not loaded", status=400)
            self.entries[name] = Entry({}, entry.fingerprint, "UNAVAILABLE", reason)
            await self._retire(entry)

    async def load_all(self) -> None:
        for name in self.repository.names():
            await self.load(name)

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The version to serve (the latest when ``version`` is empty); 404 when there is none."""
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            why = f" ({entry.reason})" if entry and entry.reason else ""
            raise ProtocolError(f"unknown model '{name}'{why}: see POST /v2/repository/index", status=404)
        if not version:
            return entry.versions[max(entry.versions, key=int)]
        lv = entry.versions.get(version)
        if lv is None:
            raise ProtocolError(f"model '{name}' has no version '{version}' loaded: it has "
                                f"{', '.join(sorted(entry.versions, key=int))}", status=404)
        return lv

    def ready(self) -> bool:
        return any(e.versions for e in self.entries.values())

    def index(self) -> list[dict]:
        """Triton's repository index: every model on disk or loaded, with state and reason."""
        out = []
        for name in sorted(set(self.repository.names()) | set(self.entries)):
            e = self.entries.get(name)
            if e and e.versions:
                out += [{"name": name, "version": v, "state": "READY", "reason": ""} for v in sorted(e.versions, key=int)]
            else:
                out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": e.reason if e else "not loaded"})
        return out

    async def poll(self, every_s: float) -> None:
        """Forever: reload models whose files changed, load new ones, unload removed ones. A change is acted on
        once the files have stayed the same for one polling interval, so a model still being copied in is not
        loaded half-written."""
        seen: dict[str, tuple] = {}
        while True:
            await asyncio.sleep(every_s)
            names = set(self.repository.names())
            for name in sorted(names | set(self.entries)):
                e = self.entries.get(name)
                if name not in names:
                    if e and e.versions:
                        await self.unload(name, "removed from the repository")
                    continue
                fp, before = self.repository.fingerprint(name), seen.get(name)
                seen[name] = fp
                if (e is not None and fp == e.fingerprint) or fp != before:
                    continue
                if e is not None and e.state == "UNAVAILABLE" and e.reason == "unloaded":
                    continue  # unloaded through the API: stays unloaded until loaded through it
                try:
                    await self.load(name)
                    log.warning("bushu serve: loaded model '%s'", name)
                except BushuError as err:
                    log.warning("bushu serve: model '%s' did not load (the old version keeps serving): %s", name, err)

    async def close(self) -> None:
        for e in self.entries.values():
            await self._retire(e)
