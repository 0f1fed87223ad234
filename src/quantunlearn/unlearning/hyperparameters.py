"""The unlearning hyperparameters, declared once: name, type, paper default, help and checks.

Each group is a frozen dataclass in the style of trl's configs: every field carries the default
of the paper it comes from and a help text citing it; ``__post_init__`` checks the values and
raises `HyperparameterError` naming the field. These classes are the single source of the config
keys under ``unlearn.common`` / ``unlearn.methods.<name>``, of their defaults, of the checks, of
the order of the keys in run paths and of the column types of every result file (the JSON
schema is generated from them: `quantunlearn.study.schema`). A group also answers for its valid
values that are almost surely a mistake (`Group.warnings`: an lr above 1e-2, a gamma_pct below
1) and for those a model's depth rules out (`Group.depth_problems`: RMU's layer); the config
asks every group and names the key. `UnlearnSettings` is the same for the study-wide settings
under ``unlearn`` (batch size, sequence length, schedule, ...): their defaults, schema and
documented help come from it alone.

A method (`quantunlearn.unlearning.methods`) takes the groups its forget term, retain term,
scope and extra terms declare; every method takes `Optimization` and `Seed`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from quantunlearn.io import parse_number


class HyperparameterError(ValueError):
    """A bad hyperparameter value; ``key`` is the field's name (the config key)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def hp(default: Any, help: str, label: str | None = None, bounds: dict | None = None) -> Any:
    """A hyperparameter field: its paper default, a help text that cites the paper, its label
    in table rows (default: the key; "" shows the bare value) and its JSON-schema bounds
    (``{"minimum": 1}``: the schema and `Group.check_bounds` read them)."""
    return field(default=default, metadata={"help": help, "label": label, "bounds": bounds or {}})


#: The JSON-schema bounds a field may declare: (whether a value keeps it, what one that does not
#: is, as jsonschema says it).
_BOUNDS = {
    "minimum": (lambda value, bound: value >= bound, "is less than the minimum of"),
    "exclusiveMinimum": (
        lambda value, bound: value > bound,
        "is less than or equal to the minimum of",
    ),
}


def _values(values: dict[str, Any], key: str) -> list:
    """The value(s) of ``key`` in a config section: one value or a grid axis (none: [])."""
    value = values.get(key, [])
    return list(value) if isinstance(value, list | tuple) else [value]


class Group:
    """Base of the hyperparameter groups: type conversion from YAML values and field helpers."""

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in cls.fields()}

    @classmethod
    def coerce(cls, key: str, value: Any) -> Any:
        """A YAML value as the field's type: PyYAML reads ``1e-5`` (no dot) as a string, so
        numeric strings become numbers; integers are accepted where a float is meant; a float
        where an integer is meant is an error, not a silent truncation."""
        kind = cls.field_types()[key]
        number = parse_number(value) if isinstance(value, str) else None
        if kind is float or kind == (float | str):
            if number is not None:
                return float(number)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if kind is float:
                raise HyperparameterError(key, f"{value!r} is not a number")
            return value
        if kind is int:
            if isinstance(number, int):
                return number
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise HyperparameterError(key, f"{value!r} is not an integer")
        choices = typing.get_args(kind)
        if typing.get_origin(kind) is Literal and value not in choices:
            raise HyperparameterError(key, f"{value!r} is not one of {list(choices)}")
        return value

    @classmethod
    def build(cls, values: dict[str, Any]):
        """An instance from ``values`` (only this group's keys are read; missing ones default)."""
        mine = {
            f.name: cls.coerce(f.name, values[f.name]) for f in cls.fields() if f.name in values
        }
        return cls(**mine)

    @classmethod
    def warnings(cls, values: dict[str, Any]) -> list[tuple[str, str]]:
        """(key, message) for the group's values in one config section (a value or a grid
        axis per key) that are valid but almost surely a mistake; none by default."""
        return []

    @classmethod
    def depth_problems(
        cls, values: dict[str, Any], depth: int, model: str
    ) -> list[tuple[str, str]]:
        """(key, message) for the values that a model of ``depth`` decoder layers (``model``
        names it) cannot take: layer indices beyond it; none by default."""
        return []

    def check_bounds(self) -> None:
        """`HyperparameterError` for a value outside its field's declared bounds (`hp`), in the
        words of the schema's message."""
        for f in self.fields():
            value = getattr(self, f.name)
            for name, bound in f.metadata["bounds"].items():
                ok, says = _BOUNDS[name]
                if value is not None and not ok(value, bound):
                    raise HyperparameterError(f.name, f"{value!r} {says} {bound}")

    def _check(self, key: str, ok: bool, message: str) -> None:
        if not ok:
            raise HyperparameterError(key, f"{message}, got {getattr(self, key)!r}")


#: Above this AdamW learning rate fine-tuning wrecks a language model within a few steps (the
#: papers' unlearning rates: 5e-6 to 7e-4): `Optimization.warnings`.
LR_WARNING = 1e-2


@dataclass(frozen=True)
class Optimization(Group):
    weight_dtype: Literal["bf16", "fp32"] = hp(
        "bf16",
        "Weight storage while unlearning: bf16 as in the code of Zhang et al. 2025 (the MUSE "
        "baselines load the models in bf16 and AdamW updates the bf16 weights), or fp32, which "
        "keeps updates smaller than a bf16 step.",
        label="",
    )
    lr: float = hp(
        1e-5,
        "AdamW learning rate, constant (Zhang et al. 2025, appendix D.1); above 1e-2 the config "
        "warns, a run whose weights become non-finite stops.",
    )
    epochs: int = hp(
        10, "Passes over the forget set (Zhang et al. 2025, appendix D.1: NEWS 10).", label="ep"
    )

    def __post_init__(self):
        self._check("lr", self.lr > 0, "the learning rate must be > 0")
        self._check("lr", math.isfinite(self.lr), "the learning rate must be finite")
        self._check("epochs", self.epochs >= 1, "at least one epoch")

    @classmethod
    def warnings(cls, values: dict[str, Any]) -> list[tuple[str, str]]:
        """A learning rate above `LR_WARNING`: valid, but it wrecks the model."""
        large = [v for v in _values(values, "lr") if v > LR_WARNING]
        if not large:
            return []
        return [
            (
                "lr",
                f"{large} is far above any unlearning learning rate (the papers: 5e-6 to 7e-4); "
                f"above {LR_WARNING:g} AdamW wrecks the model within a few steps (a collapsed "
                "run is flagged, a diverging one stops)",
            )
        ]


@dataclass(frozen=True)
class RetainWeight(Group):
    alpha: float = hp(
        1.0,
        "Weight of the retain term, eq. 1 of Zhang et al. 2025 (Table 4: 1 on NEWS); RMU's "
        "retain coefficient (the WMDP code: 1200).",
        label="α",
    )

    def __post_init__(self):
        self._check("alpha", self.alpha >= 0, "a retain weight >= 0")


@dataclass(frozen=True)
class NPOParams(Group):
    beta: float = hp(
        0.1, "NPO's inverse temperature beta (Zhang et al. 2025, appendix B.1).", label="β"
    )

    def __post_init__(self):
        self._check("beta", self.beta > 0, "NPO's beta must be > 0")


@dataclass(frozen=True)
class LossForm(Group):
    npo_klr_form: Literal["paper", "muse"] = hp(
        "paper",
        "paper: NPO (eq. 8) on sequence log-likelihood ratios and KLR (eq. 10) as a KL "
        "divergence; muse: the MUSE code's forms on raw logits (quantunlearn.unlearning.losses).",
    )


@dataclass(frozen=True)
class Seed(Group):
    seed: int = hp(0, "Seed of the batch order (and of RMU's control vector).")


@dataclass(frozen=True)
class SUREParams(Group):
    gamma_pct: float = hp(
        90.0,
        "SURE's saliency threshold: the gamma_pct-th percentile of the module scores (Zhang et "
        "al. 2025, eq. 5; appendix H recommends 90): 90, not 0.9 (values below 1 warn).",
    )
    sure_modules: Literal["linear", "all"] = hp(
        "linear",
        "SURE's candidate modules: the quantized Linear layers (section 6.1's attention and "
        "feed-forward sub-layers) or every module that holds weights.",
    )

    def __post_init__(self):
        self._check("gamma_pct", 0 <= self.gamma_pct <= 100, "a percentile in [0, 100]")

    @classmethod
    def warnings(cls, values: dict[str, Any]) -> list[tuple[str, str]]:
        """gamma_pct is a percentile (0..100): 0.9 keeps nearly every module, not the top 10 %."""
        fractions = [v for v in _values(values, "gamma_pct") if 0 < v < 1]
        if not fractions:
            return []
        return [
            (
                "gamma_pct",
                f"{fractions} looks like a fraction, but gamma_pct is a percentile in [0, 100] "
                f"(SURE's paper: 90); {fractions[0]:g} selects the modules above the "
                f"{fractions[0]:g}th percentile, nearly all of them",
            )
        ]


@dataclass(frozen=True)
class QUAILParams(Group):
    quail_gamma: float = hp(
        1.0, "Weight gamma of QUAIL's hinge (Mishra and Mehreen, eq. 15; section VI: 1)."
    )
    quail_delta: float | str = hp(
        1.0,
        "QUAIL's margin Delta_q (eq. 14; the paper uses 1.0), or a quantizer name: Delta_q = 4 x "
        "the mean |logit change| that quantizer causes on the target (unlearning/quail_margin.py).",
    )

    def __post_init__(self):
        from quantunlearn.unlearning.quail_margin import parse_margin

        self._check("quail_gamma", self.quail_gamma > 0, "must be > 0")
        try:
            parse_margin(self.quail_delta)
        except ValueError as err:
            raise HyperparameterError("quail_delta", str(err)) from None


@dataclass(frozen=True)
class LoRAParams(Group):
    lora_rank: int = hp(16, "LoRA rank r (Abitante et al., section V: the grid's smallest, 16).")
    lora_alpha: float = hp(32.0, "LoRA scaling alpha (the update is alpha / r * B A; 2 r).")
    lora_targets: Literal["all_linear", "attn", "mlp"] = hp(
        "all_linear", "The Linear layers that get adapters (all of a Llama's projections)."
    )

    def __post_init__(self):
        self._check("lora_rank", self.lora_rank >= 1, "the LoRA rank must be >= 1")
        self._check("lora_alpha", self.lora_alpha > 0, "must be > 0")


@dataclass(frozen=True)
class RMUParams(Group):
    rmu_layer: int = hp(
        7,
        "RMU's steered decoder layer, 0-based (Li et al. 2024, the WMDP code for Zephyr-7B: 7 "
        "of 32); a tiny model needs a smaller one (checked against its depth).",
    )
    rmu_steering: float = hp(6.5, "RMU's steering coefficient c (the WMDP code: 6.5).")

    def __post_init__(self):
        self._check("rmu_layer", self.rmu_layer >= 0, "a decoder layer index >= 0")
        self._check("rmu_steering", self.rmu_steering > 0, "must be > 0")

    @classmethod
    def depth_problems(
        cls, values: dict[str, Any], depth: int, model: str
    ) -> list[tuple[str, str]]:
        """The steered layer must exist in the model (0-based: below its depth)."""
        bad = [v for v in _values(values, "rmu_layer") if v >= depth]
        if not bad:
            return []
        return [
            (
                "rmu_layer",
                f"layer(s) {bad} do not exist in {model} ({depth} layers, 0..{depth - 1})",
            )
        ]


@dataclass(frozen=True)
class LATParams(Group):
    """RMU_LAT's latent adversary (Zhang et al. appendix J name the method only): the defaults
    of the public RMU + LAT code of Sheshadri et al. 2024 ("Targeted Latent Adversarial Training
    Improves Robustness to Persistent Harmful Behaviors in LLMs"; Zephyr-7B on WMDP)."""

    lat_layer: int = hp(
        7,
        "Decoder layer (0-based) at whose output the latent adversary perturbs the residual "
        "stream (Sheshadri et al. 2024, their RMU + LAT code: layer 7, one below RMU's layer 8); "
        "must be below rmu_layer.",
    )
    lat_epsilon: float = hp(
        2.0,
        "Radius of the per-token L2 ball of the perturbation (Sheshadri et al. 2024: 2 on "
        "Zephyr-7B); absolute, so scale it to the model's residual-stream norms.",
        label="ε",
    )
    lat_steps: int = hp(16, "Adversary (PGD) steps per batch (Sheshadri et al. 2024: 16).")
    lat_lr: float = hp(5e-2, "The adversary's AdamW learning rate (Sheshadri et al. 2024: 5e-2).")
    lat_model_steps: int = hp(
        4,
        "RMU optimizer steps per attack, on the same batch and perturbation (Sheshadri et al. "
        "2024: 4); a run's optimizer steps are this times its batches.",
    )
    lat_away: float = hp(
        1.0,
        "Weight of the adversary's away term, -log(1 - p) on the retain tokens (Sheshadri et al. "
        "2024: 1); 0: the toward term (forget cross-entropy) only.",
    )

    def __post_init__(self):
        self._check("lat_layer", self.lat_layer >= 0, "a decoder layer index >= 0")
        self._check("lat_epsilon", self.lat_epsilon > 0, "a ball radius > 0")
        self._check("lat_steps", self.lat_steps >= 1, "at least one adversary step")
        self._check("lat_lr", self.lat_lr > 0, "the adversary's learning rate must be > 0")
        self._check("lat_model_steps", self.lat_model_steps >= 1, "at least one RMU step")
        self._check("lat_away", self.lat_away >= 0, "a weight >= 0")


#: Every group, in the order of the columns of the result files (the order of the first
#: release: the base methods' columns, then SURE, QUAIL, LoRA, RMU and RMU_LAT's adversary).
GROUPS: tuple[type[Group], ...] = (
    Optimization,
    RetainWeight,
    NPOParams,
    LossForm,
    Seed,
    SUREParams,
    QUAILParams,
    LoRAParams,
    RMUParams,
    LATParams,
)


#: The groups of Zhang et al.'s six methods: every metric file holds their columns.
BASE_GROUPS: tuple[type[Group], ...] = (Optimization, RetainWeight, NPOParams, LossForm, Seed)


def path_order(groups) -> list[type[Group]]:
    """Groups in run-path order: the order of GROUPS, with the seed last."""
    return sorted(groups, key=lambda g: (g is Seed, GROUPS.index(g)))


def all_fields() -> dict[str, dataclasses.Field]:
    """Every hyperparameter field by name, in column order."""
    return {f.name: f for group in GROUPS for f in group.fields()}


def group_of(key: str) -> type[Group]:
    for group in GROUPS:
        if key in {f.name for f in group.fields()}:
            return group
    raise KeyError(key)


#: The hyperparameter columns of the grid and of every result file, in order.
HYPER_COLUMNS = [f.name for group in GROUPS for f in group.fields()]
#: The columns of the six base methods' groups: every metric file holds them (NA where a
#: method does not take one).
BASE_HYPER_COLUMNS = [f.name for group in BASE_GROUPS for f in group.fields()]


def column_dtype(key: str) -> str:
    """The pandas dtype of a hyperparameter column in the grid and the result files."""
    kind = group_of(key).field_types()[key]
    return {float: "Float64", int: "Int64"}.get(kind, "object")


def defaults() -> dict[str, Any]:
    return {name: f.default for name, f in all_fields().items()}


@dataclass(frozen=True)
class UnlearnSettings(Group):
    """The settings under ``unlearn`` that are the same for every run of a study: the single
    source of their config keys, defaults, schema (`quantunlearn.study.schema`) and docs."""

    batch_size: int = hp(
        16, "Forget (and retain) sequences per optimizer step.", bounds={"minimum": 1}
    )
    max_len: int = hp(
        64,
        "Unlearning sequences: documents packed up to this many tokens.",
        bounds={"minimum": 16},
    )
    max_grad_norm: float | None = hp(
        1.0,
        "Gradient norm clipping (the HF Trainer default the papers' code ran with); null: off.",
        bounds={"exclusiveMinimum": 0},
    )
    bf16_compute: Literal["native", "emulated"] = hp(
        "native",
        "bf16 weights as bf16 tensors (native, GPUs and CPUs with AVX512-BF16) or fp32 compute "
        "with the weights rounded to bf16 after every step (emulated: CPUs without AVX512-BF16 "
        "run bf16 matmuls about 15x slower).",
    )
    gradient_checkpointing: bool = hp(
        False,
        "Recompute activations in the backward pass (a 7B model with 2048-token sequences does "
        "not fit a GPU otherwise).",
    )
    lr_schedule: Literal["constant", "cosine"] = hp(
        "constant",
        "The learning rate over the optimizer steps: constant (Zhang et al. 2025, appendix D.1) "
        "or cosine decay to 0 after a linear warm-up (RWKU's scripts, Jin et al. 2024: "
        "--lr_scheduler_type cosine --warmup_steps 20). Part of every run's identity, as are "
        "batch_size, max_len, max_grad_norm and bf16_compute: away from the default study's "
        "values a run's path ends in train~<hash of these settings>, so two studies differing "
        "only in them keep separate models in one results_dir.",
    )
    warmup_steps: int = hp(
        0,
        "Linear warm-up from 0 to lr over this many optimizer steps, then the schedule (RWKU's "
        "scripts: 20; Zhang et al.: none).",
        bounds={"minimum": 0},
    )

    def __post_init__(self):
        for key, kind in self.field_types().items():
            choices = typing.get_args(kind)
            if typing.get_origin(kind) is Literal and getattr(self, key) not in choices:
                raise HyperparameterError(
                    key, f"one of {list(choices)}, got {getattr(self, key)!r}"
                )
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool):
            raise HyperparameterError("warmup_steps", f"an integer, got {self.warmup_steps!r}")
        self.check_bounds()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, by config key (the ``unlearn`` section's defaults)."""
        return {f.name: f.default for f in cls.fields()}


def lr_factor(schedule: str, warmup_steps: int, total_steps: int, step: int) -> float:
    """The learning rate's multiplier at optimizer step ``step`` (0-based) of ``total_steps``.

    The HF Trainer's schedules (which RWKU's and MUSE's code run on): warm-up ``step /
    warmup_steps`` for the first ``warmup_steps`` steps (step 0: 0), then ``constant`` 1 or
    ``cosine`` 0.5 (1 + cos(pi p)), p = (step - warmup) / (total - warmup) going from 0 to 1.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
