"""The encode job's options, one frozen record per stage, parsed and validated once.

:meth:`EncodeOptions.create` (what :func:`hpd_encode.encode` and the CLI call)
checks every value before anything is read or written and splits them by the
stage that uses them:

* :class:`SurveyOptions`: the metadata, the data root, and how to read them;
* :class:`PlanOptions`: buckets, sharing, images per VAE call;
* :class:`EncoderOptions`: the VAE and how pixels and latents are made;
* :class:`OutputOptions`: the output directory and its part files.

Each stage takes only its own record. The CLI builds its values with the same
parsers (argparse ``type=`` functions), so a bad value there is a one-line
usage error (exit 2). The device is resolved in one place,
:func:`resolve_device`, for real runs and dry runs alike.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpd_encode._core import DEFAULT_MAX_PIXELS, LATENT_COMPRESSIONS, BucketSet
from hpd_encode.buckets import load_bucket_set
from hpd_encode.errors import MissingNameError, OptionError, UsageError, VaeError
from hpd_encode.files import require_directory, require_file

LATENT_MODES = ("sample", "mean")
STORE_DTYPES = ("float32", "float16")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
ALPHA_MODES = ("drop", "white", "black")

#: Pixels per VAE call when the batch size is automatic: 8 MP on a GPU (bf16, an
#: SD3.5-size VAE), 2 MP on the CPU.
AUTO_BATCH_PIXELS = {"cuda": 8 * 1024 * 1024, "cpu": 2 * 1024 * 1024}

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|auto)$")
# A hub repository id: "name" or "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


# ---------------------------------------------------------------------------------------------------------------
# Parsers: each takes a value as the API or the command line gives it and returns it checked, or raises an
# OptionError that names the option.


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise OptionError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _int(name: str, value: Any, minimum: int, maximum: int = 2**63 - 1) -> int:
    """An integer option in ``[minimum, maximum]`` (at most a signed 64-bit one: what the Rust side
    takes), or an OptionError that names it."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        else:
            raise OptionError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise OptionError(f"{name} must be >= {minimum}, not {value}")
    if value > maximum:
        raise OptionError(f"{name} must be <= {maximum}, not {value}")
    return value


@dataclass(frozen=True)
class BatchSize:
    """Images per VAE call: a fixed count, or (``fixed`` None: automatic) as many images of a
    target size as fit a pixel budget per call; the budget is the device's
    (:data:`AUTO_BATCH_PIXELS`) unless ``pixels`` sets it. An automatic batch halves on a CUDA
    out-of-memory error; a fixed one does not."""

    fixed: int | None = None
    pixels: int | None = None

    @property
    def auto(self) -> bool:
        return self.fixed is None

    def per_call(self, height: int, width: int, device: str) -> int:
        """Images of ``height`` x ``width`` per VAE call on ``device``."""
        if self.fixed is not None:
            return self.fixed
        budget = self.pixels or AUTO_BATCH_PIXELS["cuda" if device.startswith("cuda") else "cpu"]
        return max(1, budget // (height * width))


def parse_batch_size(value: Any) -> BatchSize:
    """``"auto"``/None (a pixel budget per call), an integer >= 1, or a :class:`BatchSize`."""
    if isinstance(value, BatchSize):
        return value
    if value is None or value == "auto":
        return BatchSize()
    return BatchSize(fixed=_int("batch size", value, 1))


def parse_device(value: str | None) -> str | None:
    """``cpu``, ``cuda``, ``cuda:N`` or None/``auto`` (CUDA when present). Checks the syntax only;
    :func:`resolve_device` picks and checks the device."""
    if value in (None, "", "auto"):
        return None
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise OptionError(f"device must be cpu, cuda or cuda:N, not {value!r}")
    return value


def _cuda_available(import_torch: bool) -> bool:
    """Whether CUDA can be used: torch's answer when torch is (or may be) imported; else whether an
    NVIDIA driver is loaded (importing torch costs seconds and hundreds of MB, which a dry run
    does not need)."""
    if import_torch or "torch" in sys.modules:
        import torch

        return bool(torch.cuda.is_available())
    return os.path.exists("/proc/driver/nvidia/version")


def resolve_device(
    requested: str | None,
    *,
    local_rank: int | None = None,
    import_torch: bool = True,
    encoder: Any = None,
) -> str:
    """The device this process runs on, the one rule for real runs and dry runs.

    An encoder object (``encoder``, see :class:`~hpd_encode.vae.LatentEncoder`) runs on its own
    device. Else ``requested`` (from :func:`parse_device`): None means CUDA when it is available,
    else the CPU; under torchrun (``local_rank`` given) a bare ``cuda`` means this rank's GPU,
    ``cuda:LOCAL_RANK``. Refuses CUDA that is not there (before any output is written).
    ``import_torch=False`` (a dry run) decides without importing torch and checks nothing it would
    need torch for."""
    if encoder is not None:
        return str(encoder.device)
    available = _cuda_available(import_torch)
    device = requested or ("cuda" if available else "cpu")
    if device.startswith("cuda"):
        if import_torch:
            import torch

            if not available:
                raise OptionError(
                    f"device {device!r} asked for, but CUDA is not available here; use --device cpu"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise OptionError(
                    f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
                )
        if device == "cuda" and local_rank is not None:
            device = f"cuda:{local_rank}"
    return device


def check_vae_source(value: str | PathLike[str]) -> str:
    """A local folder that exists, or something shaped like a hub repository id."""
    text = os.fspath(value)
    if not text.strip():
        raise OptionError("vae must name a diffusers folder or a hub repository id, not an empty string")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise OptionError(f"VAE '{text}' is a file; pass the diffusers folder that holds config.json")
        return text
    if not _HUB_ID_RE.match(text):
        raise OptionError(f"VAE '{text}' is neither an existing folder nor a hub repository id (owner/name)")
    return text


def _check_vae(vae: Any, device: str | None, dtype: str) -> Any:
    """A VAE folder or hub id (checked by :func:`check_vae_source`), or an encoder object (checked
    by :func:`~hpd_encode.vae.check_encoder`) whose device and dtype the options do not contradict."""
    if isinstance(vae, (str, PathLike)):
        return check_vae_source(vae)
    from hpd_encode.vae import check_encoder, resolve_dtype

    enc = check_encoder(vae)
    name = type(enc).__qualname__
    if device not in (None, "", "auto") and device != enc.device:
        raise VaeError(f"device {device!r} asked for, but the encoder object {name} runs on {enc.device!r}")
    if dtype != "auto" and resolve_dtype(dtype, enc.device) != enc.dtype:
        raise VaeError(f"dtype {dtype!r} asked for, but the encoder object {name} takes {enc.dtype}")
    return enc


def vae_is_object(vae: Any) -> bool:
    """Whether an encode's ``vae`` is an encoder object rather than a folder or hub id."""
    return not isinstance(vae, (str, PathLike))


# ---------------------------------------------------------------------------------------------------------------
# The stages' options.


@dataclass(frozen=True)
class SurveyOptions:
    """What the survey reads: the metadata and the images it names."""

    data_root: Path
    metadata: Path
    limit: int | None = None  # only the first N metadata entries
    num_threads: int | None = None  # threads of the Rust pool; None: cores / local ranks
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class PlanOptions:
    """How the kept pairs become jobs and batches."""

    buckets: BucketSet = field(default_factory=BucketSet.hpdv3)
    share: bool = True  # one job per (image, target size), not one per comparison side
    batch_size: BatchSize = field(default_factory=BatchSize)


@dataclass(frozen=True)
class EncoderOptions:
    """How pixels are decoded and latents made."""

    data_root: Path
    vae: Any  # a diffusers folder or hub id (str), or an object implementing LatentEncoder
    vae_subfolder: str | None = None
    dtype: str = "auto"
    device: str | None = None  # as asked; resolve_device() gives the one used
    latent: str = "sample"
    store_dtype: str = "float32"
    seed: int = 0
    alpha: Literal["drop", "white", "black"] = "drop"
    max_pixels: int = DEFAULT_MAX_PIXELS
    num_threads: int | None = None
    prefetch: int = 2
    batch_size: BatchSize = field(default_factory=BatchSize)
    compile: bool | str = False  # torch.compile the encoder: True (inductor) or a backend name


@dataclass(frozen=True)
class OutputOptions:
    """Where and how part files are written."""

    output_dir: Path
    overwrite: bool = False
    rows_per_file: int = 2000
    latent_compression: str = "none"  # codec of the latent columns: "none" or "zstd"


#: The keyword options of :meth:`EncodeOptions.create` (besides the four positional ones), with the
#: stage each belongs to ("run": the job as a whole).
OPTION_STAGES: dict[str, str] = {
    "limit": "survey",
    "num_threads": "survey",
    "max_pixels": "survey",
    "buckets": "plan",
    "share": "plan",
    "batch_size": "plan",
    "vae_subfolder": "encoder",
    "dtype": "encoder",
    "device": "encoder",
    "latent": "encoder",
    "store_dtype": "encoder",
    "seed": "encoder",
    "alpha": "encoder",
    "prefetch": "encoder",
    "compile": "encoder",
    "overwrite": "output",
    "rows_per_file": "output",
    "latent_compression": "output",
    "progress": "run",
    "dist_timeout_s": "run",
    "dry_run": "run",
}


@dataclass(frozen=True)
class EncodeOptions:
    """Everything an encode run needs, validated, by stage. Build with :meth:`create`.

    The stages take their own record (:attr:`survey`, :attr:`plan`, :attr:`encoder`,
    :attr:`output`); the flat names of earlier versions (``opts.batch_size``, ``opts.output_dir``...)
    still read the value from the stage that holds it."""

    survey: SurveyOptions
    plan: PlanOptions
    encoder: EncoderOptions
    output: OutputOptions
    progress: bool = True
    dist_timeout_s: float = 7200.0
    dry_run: bool = False

    @classmethod
    def create(
        cls,
        data_root: str | PathLike[str],
        metadata: str | PathLike[str],
        output_dir: str | PathLike[str] | None,
        vae: Any,
        *,
        workers: int | None = None,
        **kwargs: Any,
    ) -> EncodeOptions:
        """Validate and freeze. ``workers`` is the deprecated name of ``num_threads``."""
        if workers is not None:
            warnings.warn("'workers' is deprecated; use 'num_threads'", DeprecationWarning, stacklevel=3)
            kwargs.setdefault("num_threads", workers)
        unknown = set(kwargs) - set(OPTION_STAGES)
        if unknown:
            raise UsageError(f"unknown encode option(s): {', '.join(sorted(unknown))}")
        dry_run = bool(kwargs.get("dry_run", False))
        data_root, metadata = Path(data_root), Path(metadata)
        require_directory(data_root, "data root")
        require_file(metadata, "metadata file")
        if output_dir is None and not dry_run:
            raise OptionError("output_dir is required (unless dry_run)")
        if vae is None and not dry_run:
            raise OptionError("vae is required (unless dry_run)")
        by_stage: dict[str, dict[str, Any]] = {
            "survey": {},
            "plan": {},
            "encoder": {},
            "output": {},
            "run": {},
        }
        for name, value in kwargs.items():
            by_stage[OPTION_STAGES[name]][name] = value
        s, p, e, o = (by_stage[k] for k in ("survey", "plan", "encoder", "output"))
        batch = parse_batch_size(p.pop("batch_size", None))
        num_threads = s.get("num_threads")
        opts = cls(
            survey=SurveyOptions(data_root, metadata, **s),
            plan=PlanOptions(buckets=load_bucket_set(p.pop("buckets", "hpdv3")), batch_size=batch, **p),
            encoder=EncoderOptions(
                data_root=data_root,
                vae=_check_vae(vae, e.get("device"), e.get("dtype", "auto")) if vae is not None else "",
                device=parse_device(e.pop("device", None)),
                batch_size=batch,
                num_threads=num_threads,
                max_pixels=s.get("max_pixels", DEFAULT_MAX_PIXELS),
                **e,
            ),
            output=OutputOptions(Path(output_dir) if output_dir is not None else Path(""), **o),
            **by_stage["run"],
        )
        opts._check()
        return opts

    def _check(self) -> None:
        s, e, o = self.survey, self.encoder, self.output
        _choice("dtype", e.dtype, COMPUTE_DTYPES)
        _choice("latent", e.latent, LATENT_MODES)
        _choice("store_dtype", e.store_dtype, STORE_DTYPES)
        _choice("alpha", e.alpha, ALPHA_MODES)
        _choice("latent_compression", o.latent_compression, LATENT_COMPRESSIONS)
        _int("seed", e.seed, -(2**63))
        if s.limit is not None:
            _int("limit", s.limit, 0)
        if s.num_threads is not None:
            _int("num_threads", s.num_threads, 1)
        _int("rows_per_file", o.rows_per_file, 0)
        _int("prefetch", e.prefetch, 1)
        _int("max_pixels", s.max_pixels, 1)
        if not isinstance(e.compile, (bool, str)) or e.compile == "":
            raise OptionError(
                f"compile must be True, False or a torch.compile backend name, not {e.compile!r}"
            )
        if not self.dist_timeout_s > 0:
            raise OptionError(f"dist_timeout_s must be > 0, not {self.dist_timeout_s}")

    def with_threads(self, num_threads: int) -> EncodeOptions:
        """The same options with ``num_threads`` decode/probe threads (in the survey and the encoder)."""
        return replace(
            self,
            survey=replace(self.survey, num_threads=num_threads),
            encoder=replace(self.encoder, num_threads=num_threads),
        )

    if not TYPE_CHECKING:  # (hidden from mypy, so that the package's own code names the stage)

        def __getattr__(self, name: str) -> Any:
            """The flat option names of earlier versions (``opts.output_dir``): the stage's value."""
            stage = OPTION_STAGES.get(name) or _POSITIONAL_STAGES.get(name)
            if stage is None or stage == "run":
                raise MissingNameError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return getattr(object.__getattribute__(self, stage), name)


#: The stage of each positional option of :meth:`EncodeOptions.create`.
_POSITIONAL_STAGES = {"data_root": "survey", "metadata": "survey", "vae": "encoder", "output_dir": "output"}
