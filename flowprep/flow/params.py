"""The one table of flow algorithms and their parameters: defaults, types, allowed values, backends.

Every path that computes flow (`flowprep extract`, `flowprep.compute_flow`, `flowprep.flow.torchflow`) resolves
its parameters through `resolve_params`, so a value is refused in one place, before any video is read,
with the same message everywhere. A backend that lacks an option (the PyTorch TV-L1 has no 3x3 median)
is a restriction in this table, not a second check downstream.

Names are ours (snake case) and map one to one onto OpenCV's setters; the resolved set is recorded in
every store, so a store says exactly what produced it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from flowprep.errors import OptionError

Rule = tuple[Callable[[Any], bool], str]  # (check, what is allowed, for the message)

_AT_LEAST_0: Rule = (lambda v: v >= 0, "0 or more")
_AT_LEAST_1: Rule = (lambda v: v >= 1, "at least 1")
_POSITIVE: Rule = (lambda v: v > 0, "positive")
_OPEN_UNIT: Rule = (lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")


# Limits every number passes, whatever its parameter: integers go to C ints (OpenCV's setters; a larger one
# fails every video with "integer won't fit into a C int"), and the flow code computes in float32, where
# 1e300 is infinite and 1e-300 is 0 (DIS then crashes or returns NaN).
C_INT_MAX = 2**31 - 1
FLOAT_MAGNITUDE = (1e-30, 1e30)  # a float parameter is 0 or has a magnitude inside this range


@dataclass(frozen=True)
class Param:
    """One parameter: its default (whose type is the parameter's type), the values allowed, a setter, and a
    practical maximum (larger values are accepted by the code but never finish, or break the flow)."""

    default: Any
    rule: Rule | None = None
    setter: str = ""  # OpenCV setter name, for the algorithms run through an OpenCV object
    choices: tuple[str, ...] = ()  # for str parameters
    maximum: float | None = None


@dataclass(frozen=True)
class Algorithm:
    """A flow algorithm: its parameters, the backends that run it (the first is the CPU default), the
    restrictions of a backend, and checks that involve several parameters."""

    name: str
    description: str
    params: dict[str, Param]
    backends: tuple[str, ...]
    restrictions: dict[str, dict[str, Rule]] = field(default_factory=dict)  # backend -> param -> rule
    joint_rules: tuple[tuple[Callable[[dict], bool], str], ...] = ()
    # checks against the frame, made once its smallest side is known (check_frame): (check(params, side), message)
    frame_rules: tuple[tuple[Callable[[dict, int], bool], str], ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # value of param "preset" -> defaults

    def defaults(self, preset: str | None = None) -> dict[str, Any]:
        """Every parameter's default; with presets, those of ``preset`` (default: the preset's default)."""
        values = {k: p.default for k, p in self.params.items()}
        if self.presets:
            values.update(self.presets[preset or values["preset"]])
            if preset:
                values["preset"] = preset
        return values


# Practical maxima: iteration counts beyond these never finish on a dataset (DIS with 2e6 refinement
# iterations, RAFT with 1e20 updates run forever); RAFT's paper uses 12 updates (32 at most, for Sintel).
# DIS's refinement weights above _MAX_WEIGHT drown the data term (and near float32's limit, 1e38, OpenCV
# crashes with SIGSEGV); an epsilon below 1e-9 squares to nothing in float32 (1e-30 crashes).
_MAX_ITERATIONS = 1000
_MAX_RAFT_ITERATIONS = 100
_MAX_WEIGHT = 1e6

# What OpenCV accepts, checked before any video is touched: out-of-range values make OpenCV return NaN or
# zero flow (Farneback winsize=0, iterations=0; TV-L1 theta=0, warps=0), raise deep inside a worker
# (pyr_scale=1, scale_step=0, median_filtering=4) or crash the process outright (Farneback winsize<0 frees
# memory twice; DIS patch_size 0 or 1, patch_stride 0 or above patch_size, finest_scale -1 and
# variational_refinement_epsilon 0 abort or raise SIGFPE). Values found by running OpenCV 4.14 on each.
TVL1 = Algorithm(
    "tvl1", "TV-L1 (Zach, Pock, Bischof 2007), OpenCV's DualTVL1OpticalFlow; OpenCV's CPU defaults",
    {
        "tau": Param(0.25, _POSITIVE, "setTau"),
        "lambda_": Param(0.15, _POSITIVE, "setLambda"),
        "theta": Param(0.3, _POSITIVE, "setTheta"),
        "nscales": Param(5, _AT_LEAST_1, "setScalesNumber"),
        "warps": Param(5, _AT_LEAST_1, "setWarpingsNumber", maximum=_MAX_ITERATIONS),
        "epsilon": Param(0.01, _POSITIVE, "setEpsilon"),
        "inner_iterations": Param(30, _AT_LEAST_1, "setInnerIterations", maximum=_MAX_ITERATIONS),
        "outer_iterations": Param(10, _AT_LEAST_1, "setOuterIterations", maximum=_MAX_ITERATIONS),
        "scale_step": Param(0.8, _OPEN_UNIT, "setScaleStep"),
        "gamma": Param(0.0, _AT_LEAST_0, "setGamma"),
        # the median filter runs on float flow, for which OpenCV's medianBlur has only 3x3 and 5x5
        "median_filtering": Param(5, (lambda v: v in (0, 1, 3, 5), "0 or 1 (no filter), 3 or 5"),
                                  "setMedianFiltering"),
    },
    backends=("opencv", "torch"),
    restrictions={"torch": {"median_filtering": (lambda v: v in (0, 1, 5),
                                                 "0 or 1 (no filter) or 5 with --backend torch, which has "
                                                 "no 3x3 median; use --backend opencv for 3")}},
)

# cv2.calcOpticalFlowFarneback has no defaults; these are the ones most peers use.
FARNEBACK = Algorithm(
    "farneback", "Farneback (2003) polynomial expansion, cv2.calcOpticalFlowFarneback; the peers' usual values",
    {
        "pyr_scale": Param(0.5, _OPEN_UNIT),
        "levels": Param(3, _AT_LEAST_0),
        "winsize": Param(15, _AT_LEAST_1),
        "iterations": Param(3, _AT_LEAST_1, maximum=_MAX_ITERATIONS),
        "poly_n": Param(5, _AT_LEAST_1),
        # OpenCV replaces a poly_sigma <= 0 by 0.3 * poly_n; ask for that value explicitly instead
        "poly_sigma": Param(1.2, _POSITIVE),
        # OPTFLOW_USE_INITIAL_FLOW (4) needs a flow to start from, which extraction never has
        "flags": Param(0, (lambda v: v in (0, 256), "0 or 256 (cv2.OPTFLOW_FARNEBACK_GAUSSIAN)")),
    },
    backends=("opencv", "torch"),
)

# OpenCV's DISOpticalFlow_create(preset) values (4.14); a parameter given explicitly overrides its preset.
_DIS_PRESETS = {
    "ultrafast": {"finest_scale": 2, "patch_stride": 4, "gradient_descent_iterations": 12,
                  "variational_refinement_iterations": 0},
    "fast": {"finest_scale": 2, "patch_stride": 4, "gradient_descent_iterations": 16,
             "variational_refinement_iterations": 5},
    "medium": {"finest_scale": 1, "patch_stride": 3, "gradient_descent_iterations": 25,
               "variational_refinement_iterations": 5},
}
DIS = Algorithm(
    "dis", "DIS, dense inverse search (Kroeger et al., ECCV 2016), cv2.DISOpticalFlow; preset medium",
    {
        "preset": Param("medium", choices=tuple(_DIS_PRESETS)),
        "finest_scale": Param(1, _AT_LEAST_0, "setFinestScale"),
        "coarsest_scale": Param(-1, (lambda v: v >= -1, "-1 (automatic) or 0 or more"), "setCoarsestScale"),
        "patch_size": Param(8, (lambda v: v >= 2, "at least 2"), "setPatchSize"),
        "patch_stride": Param(3, _AT_LEAST_1, "setPatchStride"),
        "gradient_descent_iterations": Param(25, _AT_LEAST_0, "setGradientDescentIterations",
                                             maximum=_MAX_ITERATIONS),
        "variational_refinement_iterations": Param(5, _AT_LEAST_0, "setVariationalRefinementIterations",
                                                   maximum=_MAX_ITERATIONS),
        "variational_refinement_alpha": Param(20.0, _AT_LEAST_0, "setVariationalRefinementAlpha", maximum=_MAX_WEIGHT),
        "variational_refinement_delta": Param(5.0, _AT_LEAST_0, "setVariationalRefinementDelta", maximum=_MAX_WEIGHT),
        "variational_refinement_gamma": Param(10.0, _AT_LEAST_0, "setVariationalRefinementGamma", maximum=_MAX_WEIGHT),
        "variational_refinement_epsilon": Param(0.01, (lambda v: v >= 1e-9, "at least 1e-9"),
                                                "setVariationalRefinementEpsilon"),
        "use_mean_normalization": Param(True, None, "setUseMeanNormalization"),
        "use_spatial_propagation": Param(True, None, "setUseSpatialPropagation"),
    },
    backends=("opencv",),
    joint_rules=((lambda p: p["patch_stride"] <= p["patch_size"], "patch_stride must not exceed patch_size"),),
    frame_rules=((lambda p, side: p["patch_size"] <= side, "patch_size must not exceed the frame's smaller side"),),
    presets=_DIS_PRESETS,
)

# torchvision's RAFT (Teed & Deng, ECCV 2020). Weights are read from the torch cache or a file, never
# downloaded; which file was used (its SHA-256) is recorded with the flow.
RAFT = Algorithm(
    "raft", "RAFT (Teed & Deng, ECCV 2020), torchvision's raft_large / raft_small; 12 updates",
    {
        "model": Param("large", choices=("large", "small")),
        "iterations": Param(12, _AT_LEAST_1, maximum=_MAX_RAFT_ITERATIONS),
        "weights": Param(""),  # a file holding the state dict; empty: the torch cache's file of the model
    },
    backends=("torch",),
)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (TVL1, FARNEBACK, DIS, RAFT)}
BACKENDS = ("opencv", "torch")
ALIASES = {"lambda": "lambda_"}  # `lambda` is a Python keyword
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def algorithm(name: str) -> Algorithm:
    """The table entry of ``name``; OptionError naming the known algorithms otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise OptionError(f"unknown flow algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}") from None


def _convert(algo: str, key: str, value: Any, param: Param) -> Any:
    """``value`` (a string from --param or a Python value) as the parameter's type; OptionError if it is not."""
    kind = type(param.default)
    what = {int: "an integer", float: "a number", bool: "true or false", str: "text"}[kind]
    bad = OptionError(f"{algo} parameter {key}={value!r} is not {what}; see `flowprep params --algo {algo}`")
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too, without importing it
    if kind is bool:
        if is_bool:
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE + _FALSE:
            return text in _TRUE
        raise bad
    if kind is str:
        text = str(value).strip()
        if param.choices and text not in param.choices:
            raise OptionError(f"{algo} parameter {key}={value!r}: choose one of {', '.join(param.choices)}")
        return text
    if is_bool:
        raise bad
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        try:
            return int(str(value).strip())  # "2.7" and "3.0" are refused: no silent truncation
        except ValueError:
            raise bad from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not math.isfinite(number):
        raise OptionError(f"{algo} parameter {key}={value!r} must be a finite number")
    return number


def resolve_params(algo: str, params: dict[str, Any] | None = None, backend: str | None = None
                   ) -> dict[str, Any]:
    """Defaults of ``algo`` overlaid with ``params``, every value converted and checked.

    ``backend`` ("opencv" or "torch"; None: any) adds that backend's restrictions and refuses a backend
    that does not run the algorithm. Unknown names, wrong types and values the code cannot use raise
    OptionError naming the parameter and what is allowed.
    """
    table = algorithm(algo)
    if backend is not None and backend not in table.backends:
        raise OptionError(f"{algo} runs with --backend {' or '.join(table.backends)}, not {backend}")
    given = {ALIASES.get(k, k): v for k, v in (params or {}).items()}
    unknown = sorted(set(given) - set(table.params))
    if unknown:
        raise OptionError(f"unknown {algo} parameter {unknown[0]!r}; known parameters: "
                          f"{', '.join(sorted(table.params))}")
    converted = {k: _convert(algo, k, v, table.params[k]) for k, v in given.items()}
    resolved = table.defaults(converted.get("preset")) | converted
    rules = {k: p.rule for k, p in table.params.items() if p.rule} | table.restrictions.get(backend, {})
    for key, (ok, allowed) in rules.items():
        if not ok(resolved[key]):
            raise OptionError(f"{algo} parameter {key}={resolved[key]!r} is out of range: must be {allowed}")
    for key, param in table.params.items():
        if problem := _limit_problem(param, resolved[key]):
            raise OptionError(f"{algo} parameter {key}={resolved[key]!r} is out of range: {problem}")
    for ok, message in table.joint_rules:
        if not ok(resolved):
            raise OptionError(f"{algo} parameters: {message} "
                              f"({', '.join(f'{k}={v}' for k, v in sorted(converted.items()))})")
    return resolved


def _limit_problem(param: Param, value: Any) -> str:
    """Why ``value`` breaks the limits every number passes (C_INT_MAX, FLOAT_MAGNITUDE) or the parameter's
    practical maximum; empty when it does not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    if isinstance(value, int) and not -C_INT_MAX - 1 <= value <= C_INT_MAX:
        return f"must fit a C int (-{C_INT_MAX + 1}..{C_INT_MAX})"
    low, high = FLOAT_MAGNITUDE
    if isinstance(value, float) and value != 0 and not low <= abs(value) <= high:
        return f"must be 0 or of magnitude {low:g} to {high:g} (the flow is computed in float32)"
    if param.maximum is not None and value > param.maximum:
        return f"must be at most {param.maximum:g} (more never finishes, or breaks the flow)"
    return ""


def check_frame(algo: str, params: dict[str, Any], side: int) -> None:
    """The resolved ``params`` against frames whose smaller side is ``side`` pixels (known once --size or
    --short-side is, or from the frames themselves); OptionError naming the rule otherwise."""
    for ok, message in algorithm(algo).frame_rules:
        if not ok(params, side):
            shown = ", ".join(f"{k}={params[k]}" for k in sorted(params) if k in message)
            raise OptionError(f"{algo} parameters: {message} ({shown}; frames of {side} px on their smaller side)")


def describe(algo: str) -> list[str]:
    """Lines of `flowprep params`: each parameter, its default, type and the values allowed."""
    table = algorithm(algo)
    lines = [f"# {table.description}; backends: {', '.join(table.backends)}"]
    for key, p in table.params.items():
        allowed = (", ".join(p.choices) if p.choices else p.rule[1] if p.rule else
                   "true or false" if isinstance(p.default, bool) else "a file path, empty for the torch cache")
        extra = [f"{b}: {r[key][1]}" for b, r in table.restrictions.items() if key in r]
        if p.maximum is not None:
            allowed += f", at most {p.maximum:g}"
        lines.append(f"{key}={p.default}".ljust(40) + f"# {type(p.default).__name__}, {allowed}"
                     + (f" ({'; '.join(extra)})" if extra else ""))
    if table.presets:
        for name, values in table.presets.items():
            lines.append(f"# preset {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    for _, message in (*table.joint_rules, *table.frame_rules):
        lines.append(f"# {message}")
    lines.append(f"# every integer fits a C int; every float is 0 or of magnitude {FLOAT_MAGNITUDE[0]:g} to "
                 f"{FLOAT_MAGNITUDE[1]:g}")
    return lines
