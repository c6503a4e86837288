"""The LoRA adapters loaded into the serving model, and the switch between them per step.

`AdapterPool` owns the PEFT side of serving: which registry versions are loaded (as which
PEFT adapter name), who is using them, the least-recently-used eviction beyond
`max_adapters`, and `activate()`, the cheap switch the chat engine's per-step hook calls.
`step` is the model's step lock: every forward step and every change to the adapter layers
holds it, so no step ever sees a half-loaded adapter.

No gradio and no generation here: `app/serving/engine.py` drives this module.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from typing import Any

from training.registry import Registry, RegistryError

log = logging.getLogger(__name__)

UNKNOWN = object()  # "which adapter is active" after PEFT itself changed the layers


class AdapterError(Exception):
    """An adapter version that cannot be used: refused by the registry or failed to load."""


class AdapterPool:
    """Registry versions loaded as named PEFT adapters into one base model.

    Thread-safe. `serving` is the version new replies get (None: the bare base); it and any
    version a reply still uses (see `acquire`/`release`) are never evicted.
    """

    def __init__(self, model: Any, registry: Registry, *, max_adapters: int = 3) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self.model = model
        self.registry = registry
        self.max_adapters = max_adapters  # adapters kept in memory (more while in use)
        self.serving: str | None = None
        self.peft: Any = None  # the PeftModel wrapper, once an adapter is loaded
        self.keys: dict[str, str] = {}  # version -> PEFT adapter name
        self.inflight: Counter[str] = Counter()
        self.last_used: dict[str, float] = {}
        self.active: object = None  # PEFT adapter active in the layers (None: none)
        self.state = threading.Lock()  # guards keys, inflight, last_used and serving
        self.admin = threading.RLock()  # one adapter load/unload at a time
        self.step = threading.Lock()  # one forward step at a time; guards the layers
        self._names = itertools.count(1)
        self._plain_layers: list[Any] = []  # adapter layers, by how to switch them
        self._special_layers: list[Any] = []
        self._aux_layers: list[Any] = []

    # -- reading -------------------------------------------------------------------------
    def loaded(self) -> list[str]:
        """Versions whose adapters are in memory now."""
        with self.state:
            return sorted(self.keys)

    def serving_key(self) -> str | None:
        """The PEFT name of the serving version (None: the bare base)."""
        return self.keys.get(self.serving) if self.serving else None

    # -- the per-step switch ---------------------------------------------------------------
    def activate(self, key: str | None) -> None:
        """Make PEFT adapter `key` (None: none) the active one in every adapter layer.

        Caller holds `step`. PeftModel.set_adapter walks all ~3,000 modules of SmolLM2 and
        resets requires_grad on every adapter weight: 18 ms, paid on every step while two
        versions' replies interleave. Our adapters are loaded frozen (is_trainable=False), so
        that bookkeeping is a no-op and what remains of BaseTunerLayer.set_adapter is setting
        each layer's active list: ~1 ms. Layers whose class overrides set_adapter get the
        real call.
        """
        names = [] if key is None else [key]
        for layer in self._plain_layers:
            layer._active_adapter = list(names)  # exactly what BaseTunerLayer.set_adapter sets
        for layer in self._special_layers:
            layer.set_adapter(names, inference_mode=True)
        for wrapper in self._aux_layers:  # modules_to_save and similar, as peft does it
            name = None if key is None else wrapper.check_set_adapter(key)
            if name is not None and name in getattr(wrapper, "_adapters", ()):
                wrapper.set_adapter(name, inference_mode=True)
            else:
                wrapper.set_adapter([], inference_mode=True)
        self.active = key

    # -- pinning versions for replies ----------------------------------------------------
    def acquire(self, version: str | None) -> str | None:
        """Pin `version` for a reply (loading it if needed); returns its PEFT name."""
        if version is None:
            return None
        with self.state:
            key = self.keys.get(version)
            if key is not None:
                self._pin(version)
                return key
        with self.admin:  # a version nobody has used lately: load it now
            if version not in self.keys:
                self.load(version)
            with self.state:
                self._pin(version)
                key = self.keys[version]
            self.evict()
        return key

    def release(self, version: str | None) -> None:
        """A reply that pinned `version` has finished."""
        if version is None:
            return
        with self.state:
            self.inflight[version] -= 1
            over = len(self.keys) > self.max_adapters
        if over and self.admin.acquire(blocking=False):  # never wait for a load here
            try:
                self.evict()
            finally:
                self.admin.release()

    def touch(self, version: str) -> None:
        """Mark `version` as just used (it moves to the back of the eviction queue)."""
        self.last_used[version] = time.monotonic()

    def _pin(self, version: str) -> None:
        self.inflight[version] += 1
        self.last_used[version] = time.monotonic()

    # -- loading and unloading -----------------------------------------------------------
    def load(self, version: str) -> None:
        """Verify `version` and load it as a new named adapter (caller holds `admin`)."""
        from peft import PeftModel

        try:
            path = self.registry.verify(version)
        except RegistryError as err:
            raise AdapterError(f"adapter {version!r} refused: {err}") from err
        key = f"adapter{next(self._names)}"  # PEFT names cannot hold '.', versions can
        start = time.perf_counter()
        with self.step:  # no forward step may run while layers change
            self.active = UNKNOWN
            try:
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(
                        self.model,
                        path,
                        adapter_name=key,
                        is_trainable=False,
                        low_cpu_mem_usage=True,
                    )
                else:
                    self.peft.load_adapter(
                        path, adapter_name=key, is_trainable=False, low_cpu_mem_usage=True
                    )
                missing = [
                    name
                    for name, param in self.peft.named_parameters()
                    if f".{key}." in name and param.device.type == "meta"
                ]
                if missing:  # PEFT only warns; these would fail every step of every reply
                    raise ValueError(f"the adapter file has no weights for {missing[0]} and more")
                if self.peft.active_adapter not in self.peft.peft_config:
                    # a failed first load left PEFT pointing at an adapter that is gone;
                    # PEFT's forward (mixed batches) needs a live one
                    self.peft.set_adapter(key, inference_mode=True)
            except Exception as err:
                self._discard(key)
                raise AdapterError(
                    f"adapter {version!r} failed to load ({type(err).__name__}: {err})"
                ) from err
            finally:
                self._find_layers()
        with self.state:
            self.keys[version] = key
            self.last_used[version] = time.monotonic()
        log.info("loaded adapter %s in %.2f s", version, time.perf_counter() - start)

    def evict(self) -> None:
        """Unload idle adapters beyond `max_adapters`, least recently used first.

        Never the serving version nor one a reply in flight uses (caller holds `admin`).
        """
        with self.state:
            idle = [v for v in self.keys if v != self.serving and self.inflight[v] <= 0]
            excess = len(self.keys) - self.max_adapters
            victims = sorted(idle, key=lambda v: self.last_used.get(v, 0.0))[: max(0, excess)]
            keys = [self.keys.pop(v) for v in victims]
            for v in victims:
                self.inflight.pop(v, None)
                self.last_used.pop(v, None)
        if not keys:
            return
        with self.step:
            self.active = UNKNOWN
            try:
                for key in keys:
                    self._delete(key)
            finally:
                self._find_layers()
        log.info("unloaded adapters %s", ", ".join(victims))

    def _discard(self, key: str) -> None:
        """Undo a failed load so the layers hold exactly the adapters we know about."""
        if self.peft is None:  # the first wrap failed half-way: strip injected layers
            from peft.tuners.tuners_utils import BaseTunerLayer

            for name, module in list(self.model.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    parent, _, child = name.rpartition(".")
                    setattr(self.model.get_submodule(parent), child, module.get_base_layer())
            if "peft_config" in vars(self.model):  # set by PEFT's tuner on the base model
                del self.model.peft_config
            return
        if key in self.peft.peft_config:
            try:
                self._delete(key)
            except Exception:  # pragma: no cover - nothing more we can do
                log.exception("could not remove the half-loaded adapter %s", key)

    def _delete(self, key: str) -> None:
        """Delete PEFT adapter `key`, leaving PEFT's own bookkeeping on a loaded one."""
        self.activate(None)  # nothing active: PEFT need not pick (and warn about) another
        self.peft.delete_adapter(key)
        remaining = list(self.peft.peft_config)
        if remaining:
            self.peft.set_adapter(remaining[0], inference_mode=True)
        self.active = UNKNOWN

    def _find_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        modules = list(self.model.modules())
        tuners = [m for m in modules if isinstance(m, BaseTunerLayer)]
        plain = BaseTunerLayer.set_adapter
        self._plain_layers = [m for m in tuners if type(m).set_adapter is plain]
        self._special_layers = [m for m in tuners if type(m).set_adapter is not plain]
        self._aux_layers = [m for m in modules if isinstance(m, AuxiliaryTrainingWrapper)]


class UsableVersions:
    """Registered versions whose files pass their checksums: what the compare menu offers.

    A version's checksums are computed again only when one of its files changed (size or
    modification time), so listing stays cheap on every page load.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._checked: dict[str, tuple[tuple[tuple[str, int, int], ...], bool]] = {}

    def _stamp(self, version: str) -> tuple[tuple[str, int, int], ...]:
        found = []
        for path in self.registry.path(version).rglob("*"):
            try:
                info = path.stat()
            except OSError:
                continue
            found.append((str(path), info.st_size, info.st_mtime_ns))
        return tuple(sorted(found))

    def __call__(self) -> list[str]:
        usable = []
        for version in self.registry.versions():
            stamp = self._stamp(version)
            seen = self._checked.get(version)
            if seen is None or seen[0] != stamp:
                try:
                    self.registry.verify(version)
                    seen = (stamp, True)
                except RegistryError:
                    seen = (stamp, False)
                self._checked[version] = seen
            if seen[1]:
                usable.append(version)
        return usable
