"""How new policy weights reach the rollout server: the choice (file or NCCL), and a bucketed exporter.

**The choice** (``rollout.weight_sync``): ``file`` writes a safetensors file that every vLLM worker
reads (``FileWeightTransport``: CPU, or any shared filesystem); ``nccl`` broadcasts GPU-to-GPU through
vLLM's weight-transfer API (``NCCLWeightTransport`` here: vLLM 0.32's ``NCCLTrainerWeightTransferEngine``
with the HTTP client); ``auto`` takes NCCL when the trainer has CUDA *and* the server was started with
``--weight-transfer-config '{"backend": "nccl"}'`` (``rbr-rlhf rollout serve --weight-transfer nccl``;
a self-started server gets it by itself), else the file. NCCL needs one device per rank, so the trainer
and the vLLM workers must sit on different GPUs: one GPU cannot exercise the broadcast.

**The exporter** (``MergedWeights``): walks the policy, possibly LoRA-wrapped (peft) and possibly
ZeRO-3 partitioned, and yields the served model's weights, under the Hugging Face names vLLM loads, in
buckets of at most ``bucket_mb``. A LoRA layer's weight goes out merged, ``W + scale * B @ A`` (peft's
``get_delta_weight``), computed per layer: nothing is merged into the model and unmerged again, and no
full extra copy of the model is ever held. Under ZeRO-3 the parameters of one bucket are gathered
(``deepspeed.zero.GatheredParameters`` over that bucket's parameters only) while its tensors are used,
and released before the next; every rank must iterate in lockstep (gathering is a collective), which
``push_weights`` arranges. This is the pattern of OpenRLHF's and verl's weight broadcast (gather a
parameter or a bucket, broadcast, release), with the LoRA merge folded into the walk.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Iterator, Sequence
from urllib.parse import urlparse

import torch

log = logging.getLogger(__name__)
MODES = ("auto", "file", "nccl")


class WeightSyncConfigError(ValueError):
    """rollout.weight_sync asks for something this run cannot do."""


def choose_weight_sync(mode: str, trainer_has_cuda: bool, server_nccl_enabled: bool | None) -> str:
    """``"file"`` or ``"nccl"`` for ``rollout.weight_sync`` = ``mode``.

    ``server_nccl_enabled``: whether the rollout server was started with NCCL weight transfer (``None``:
    unknown, e.g. a server that does not expose ``/server_info``; ``auto`` then keeps the file path).
    """
    if mode not in MODES:
        raise WeightSyncConfigError(f"rollout.weight_sync must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "file":
        return "file"
    if mode == "nccl":
        if not trainer_has_cuda:
            raise WeightSyncConfigError(
                "rollout.weight_sync=nccl needs CUDA in the trainer (NCCL broadcasts GPU to GPU), and torch "
                "sees no GPU here; use rollout.weight_sync=file (or auto) on CPU")
        if server_nccl_enabled is False:
            raise WeightSyncConfigError(
                "rollout.weight_sync=nccl, but the rollout server was not started with NCCL weight transfer: "
                "start it with `rbr-rlhf rollout serve --weight-transfer nccl` (vLLM's "
                "--weight-transfer-config '{\"backend\": \"nccl\"}'), or use rollout.weight_sync=auto|file")
        return "nccl"
    return "nccl" if trainer_has_cuda and server_nccl_enabled else "file"


def server_launch_transfer(mode: str, trainer_has_cuda: bool) -> str | None:
    """The ``weight_transfer`` a self-started server gets: ``"nccl"`` when the run will use it."""
    return "nccl" if choose_weight_sync(mode, trainer_has_cuda, True) == "nccl" else None


def server_nccl_enabled(url: str, http=None, timeout: float = 10.0) -> bool | None:
    """Whether the vLLM server at ``url`` was started with the NCCL weight-transfer backend, read from its
    ``/server_info`` (a dev-mode route, on with ``VLLM_SERVER_DEV_MODE=1``); ``None`` when it cannot tell."""
    import httpx

    client = http or httpx.Client(timeout=timeout)
    try:
        r = client.get(url.rstrip("/") + "/server_info", params={"config_format": "json"})
        if r.status_code != 200:
            return None
        wt = (r.json().get("vllm_config") or {}).get("weight_transfer_config")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    finally:
        if http is None:
            client.close()
    if wt is None:
        return False
    if isinstance(wt, dict):
        return wt.get("backend") == "nccl"
    return "nccl" in str(wt)


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def check_nccl_address(value: str | None) -> str | None:
    """``rollout.nccl_address``: null, or a host name / IP address the vLLM workers can reach the trainer at."""
    if value is None or value == "":
        return None
    value = str(value).strip()
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if ":" in value or not _HOST.match(value):
        raise WeightSyncConfigError(f"rollout.nccl_address must be a host name or an IP address (no port, no "
                                    f"scheme), got {value!r}")
    return value


def nccl_master_address(configured: str | None, server_url: str, self_started: bool) -> str:
    """Where the trainer opens the NCCL rendezvous: the configured address; else loopback when the server
    is this host's (self-started, or a loopback URL); else this host's name, which a cluster resolves."""
    if configured:
        return configured
    host = urlparse(server_url).hostname or ""
    if self_started or host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    import socket

    return socket.getfqdn()


# ------------------------------------------------------------------------------------------------ exporter
@dataclass
class _Unit:
    """Tensors that go out together: one LoRA layer's merged weight (and bias), or one plain parameter."""

    module: torch.nn.Module | None     # the LoRA layer, or None for a plain parameter
    names: list[str]                   # output (HF) names
    sources: list[torch.nn.Parameter]  # the parameter each output is read from (LoRA: the base weight/bias)
    params: list[torch.nn.Parameter]   # everything to gather (LoRA: base + adapters)
    nbytes: int                        # bytes gathered


def _full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    shape = getattr(p, "ds_shape", None)  # ZeRO-3 partitions: the full shape lives on the parameter
    return tuple(shape) if shape is not None else tuple(p.shape)


def _numel(p) -> int:
    n = 1
    for s in _full_shape(p):
        n *= int(s)
    return n


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _lora_layer_cls():
    try:
        from peft.tuners.lora import LoraLayer

        return LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return ()


def _units(model) -> list[_Unit]:
    base = _base(model)
    lora_cls = _lora_layer_cls()
    units, seen, lora_prefixes = [], set(), []
    for mname, mod in base.named_modules():
        if any(mname.startswith(p) for p in lora_prefixes):
            continue
        if lora_cls and isinstance(mod, lora_cls) and hasattr(mod, "base_layer"):
            lora_prefixes.append(mname + ".")
            names, sources = [], []
            for pname, p in mod.base_layer.named_parameters(recurse=False):
                names.append(f"{mname}.{pname}" if mname else pname)
                sources.append(p)
            params = [p for p in mod.parameters()]
            seen.update(id(p) for p in params)
            units.append(_Unit(mod, names, sources, params, sum(_numel(p) * p.element_size() for p in params)))
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue  # tied weights (lm_head = embed_tokens) go out once, under the first name
            seen.add(id(p))
            name = f"{mname}.{pname}" if mname else pname
            units.append(_Unit(None, [name], [p], [p], _numel(p) * p.element_size()))
    return units


def plan_buckets(units: Sequence[_Unit], bucket_mb: float) -> list[list[_Unit]]:
    """Consecutive units grouped so that each bucket gathers at most ``bucket_mb`` MiB; a unit larger than
    that alone (an embedding matrix, say) is a bucket of its own."""
    limit = max(1, int(bucket_mb * 2 ** 20))
    buckets, cur, size = [], [], 0
    for u in units:
        if cur and size + u.nbytes > limit:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(u)
        size += u.nbytes
    if cur:
        buckets.append(cur)
    return buckets


def _merged(unit: _Unit, name_index: int, clone: bool) -> torch.Tensor:
    src = unit.sources[name_index]
    if unit.module is None or not unit.names[name_index].endswith("weight"):
        t = src.detach()
        return t.clone() if clone else t
    layer = unit.module
    w = src.detach()
    if getattr(layer, "merged", False):  # adapters already in the base weight
        return w.clone() if clone else w
    out = w.clone()
    for adapter in getattr(layer, "active_adapters", []) or []:
        if adapter in getattr(layer, "lora_A", {}) or adapter in getattr(layer, "lora_embedding_A", {}):
            out += layer.get_delta_weight(adapter).to(out.dtype)  # scale * B @ A (transposed for fan_in_fan_out)
    return out


class MergedWeights:
    """The served model's weights from a (LoRA, ZeRO-3) policy, as a re-iterable ``(name, tensor)`` source.

    ``metadata()`` lists ``(name, dtype, shape)`` without gathering anything; iterating yields the merged
    tensors bucket by bucket (``buckets()`` yields the buckets themselves). ``zero3``: gather each
    bucket's parameters while it is read; every rank must iterate (a collective), and only ``rank`` 0
    gets real tensors back (other ranks' are placeholders). ``dtype``: cast what goes out (e.g. to the
    server's bf16, halving the bytes); None keeps the parameters' dtype.
    """

    def __init__(self, model, bucket_mb: float = 512, zero3: bool = False, rank: int = 0,
                 dtype: torch.dtype | None = None):
        self.model, self.bucket_mb, self.zero3, self.rank, self.dtype = model, bucket_mb, zero3, rank, dtype
        self._buckets = plan_buckets(_units(model), bucket_mb)

    def metadata(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        out = []
        for bucket in self._buckets:
            for u in bucket:
                for name, src in zip(u.names, u.sources):
                    out.append((name, self.dtype or src.dtype, _full_shape(src)))
        return out

    @property
    def bucket_sizes(self) -> list[int]:
        """Bytes each bucket gathers (the bound on what one bucket adds in memory, plus its merged outputs)."""
        return [sum(u.nbytes for u in b) for b in self._buckets]

    def buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        for bucket in self._buckets:
            params = [p for u in bucket for p in u.params]
            with self._gathered(params), torch.no_grad():
                if self.zero3 and self.rank != 0:
                    out = [(n, torch.empty(0)) for u in bucket for n in u.names]
                else:
                    # Under ZeRO-3 the gathered storage is released after the bucket: copy what goes out.
                    out = [(n, self._cast(_merged(u, i, clone=self.zero3)))
                           for u in bucket for i, n in enumerate(u.names)]
                yield out
            del out

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype) if self.dtype is not None and t.dtype != self.dtype else t

    def _gathered(self, params):
        if not self.zero3:
            import contextlib

            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in self.buckets():
            yield from bucket

    def state_dict(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Everything in one dict on ``device`` (the file path); a bucket at a time on the GPU."""
        return {k: v.to(device) for k, v in self}


def push_weights(engine, model, *, zero3: bool, rank: int, bucket_mb: float = 512) -> int | None:
    """Send the policy's merged weights to the rollout engine. Rank 0 holds the engine; under ZeRO-3 every
    other rank joins the per-bucket gathers (the same walk, tensors thrown away). Returns the new weight
    version on rank 0, None elsewhere."""
    if rank != 0:
        if zero3:
            for _ in MergedWeights(model, bucket_mb, zero3=True, rank=rank).buckets():
                pass
        return None
    transport = getattr(engine, "transport", None)
    if getattr(transport, "streams", False):  # NCCL: the transport reads the buckets as it broadcasts
        return engine.update_weights(MergedWeights(model, bucket_mb, zero3=zero3, rank=0,
                                                   dtype=getattr(transport, "dtype", None)))
    if zero3:
        return engine.update_weights(MergedWeights(model, bucket_mb, zero3=True, rank=0).state_dict("cpu"))
    from ..ppo.models import merged_policy_state_dict

    return engine.update_weights(merged_policy_state_dict(model))


# ------------------------------------------------------------------------------------------------ NCCL
class NCCLWeightTransport:
    """GPU path: vLLM's weight-transfer API over NCCL (the server needs ``weight_transfer="nccl"``).

    The trainer (rank 0) joins an NCCL group with the inference workers once, at the first send
    (``/init_weight_transfer_engine``; world size = the server's ``/get_world_size`` + 1), then each
    update broadcasts the buckets GPU-to-GPU (vLLM's packed producer), with no file and no host copy.
    vLLM 0.32's ``NCCLTrainerInitInfo`` takes this trainer's ``rank`` explicitly (keyword-only; rank 0 is
    the sender), which the transport this replaces did not pass. Needs CUDA on both sides, and the
    trainer's GPU must not be one of the workers' (NCCL: one device per rank).
    """

    streams = True  # push_weights hands it a MergedWeights source rather than a dict

    def __init__(self, master_address: str, master_port: int | None = None, inference_world_size: int | None = None,
                 dtype: torch.dtype | None = None, packed: bool = True):
        from ..procs import free_port

        self.master_address = master_address
        self.master_port = master_port or free_port()
        self.inference_world_size, self.dtype, self.packed = inference_world_size, dtype, packed
        self._engine = self._client = None
        self._source = _SwappableSource()

    def _init(self, engine) -> None:
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        if self.inference_world_size is None:
            self.inference_world_size = int(engine.http.get(engine.url + "/get_world_size").json()["world_size"])
        self._client = HTTPVLLMWeightSyncClient(engine.url)
        info = NCCLTrainerInitInfo(master_address=self.master_address, master_port=self.master_port,
                                   world_size=self.inference_world_size + 1, packed=self.packed, rank=0)
        log.warning("NCCL weight sync: trainer rank 0 at %s:%d, %d inference worker(s)", self.master_address,
                    self.master_port, self.inference_world_size)
        self._engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=self._client, source=self._source)

    def send(self, engine, state_dict) -> None:
        if self._engine is None:
            self._init(engine)
        self._source.inner = state_dict if hasattr(state_dict, "metadata") else _DictSource(state_dict)
        try:
            self._engine.send_weights()  # start_weight_update -> update_weights (+ broadcast) -> finish
        finally:
            self._source.inner = None

    def close(self) -> None:
        if self._engine is not None:
            try:
                self._client.shutdown_weight_transfer_engine()
            except Exception as e:  # noqa: BLE001 - the server may be gone already
                log.warning("could not shut the server's weight-transfer engine down: %s", e)
            self._engine.shutdown()
            self._engine = None


class _DictSource:
    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def metadata(self):
        return [(k, v.dtype, tuple(v.shape)) for k, v in self.state.items()]

    def __iter__(self):
        for k, v in self.state.items():
            yield k, v.cuda(non_blocking=True)


def _make_swappable():
    """A vLLM ``WeightSource`` whose content is swapped each update (the engine keeps one source)."""
    try:
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
    except ImportError:  # no vLLM here (CPU tests, the GPU check machine): a plain stand-in
        ParamMeta, WeightSource = None, object

    class Swappable(WeightSource):
        inner = None

        def metadata(self):
            meta = self.inner.metadata()
            return [ParamMeta(n, d, tuple(s)) for n, d, s in meta] if ParamMeta else meta

        def __iter__(self):
            for name, t in self.inner:
                yield name, (t if t.is_cuda else t.cuda(non_blocking=True))

    return Swappable


def _SwappableSource():
    return _make_swappable()()


def make_transport(rollout_cfg, url: str, self_started: bool, sync_dir: str | None, has_cuda: bool | None = None):
    """The transport ``rollout.weight_sync`` asks for, for a server at ``url`` (self-started or given).

    A self-started server was launched with NCCL weight transfer exactly when ``server_launch_transfer``
    said so; a server given by URL is asked (``/server_info``), only when NCCL is possible at all."""
    from .vllm_server import FileWeightTransport

    has_cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
    mode = rollout_cfg.weight_sync
    if self_started:
        server_nccl = server_launch_transfer(mode, has_cuda) == "nccl"
    else:
        server_nccl = server_nccl_enabled(url) if has_cuda and mode != "file" else False if mode == "auto" else None
    choice = choose_weight_sync(mode, has_cuda, server_nccl)
    log.warning("weight sync: %s (rollout.weight_sync=%s, trainer CUDA: %s, server NCCL transfer: %s)",
                choice, mode, has_cuda, server_nccl)
    if choice == "nccl":
        address = nccl_master_address(rollout_cfg.nccl_address, url, self_started)
        return NCCLWeightTransport(address)
    return FileWeightTransport(sync_dir)
