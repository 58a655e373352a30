"""Choose α, schedule and scope for a model and its data, safe by default: never worse than the
base init beyond the probe's noise, at a cost of a few percent of one training epoch.

:func:`choose_init` trains short probes of the candidates (α = 1, the base init itself, always
among them) on deep copies, and keeps the base unless a candidate wins beyond noise;
:func:`auto_init_` then applies the choice in place. The criterion (docs/auto-alpha.md):

- **Probe.** Every candidate starts from the same random state (so its weights are the base
  draw times its factors) and trains with the user's optimizer on the same batches in the same
  order. The loss of step t is computed on batch t *before* the update on it: each step's loss is
  a held-out measurement of the model after t - 1 updates (progressive validation), so scoring
  costs no extra pass.
- **Two-stage successive halving.** Screen: every candidate runs ``screen_steps`` steps; the
  non-base candidate with the lowest loss on the last screen batch goes on. Final: it and the base
  continue to ``final_steps`` steps in all. A candidate whose loss or gradient goes NaN/inf is out.
- **Decision.** Per-sample losses of the finalist and the base on the same samples are paired;
  the finalist wins when, over the last ``score_steps`` batches *and* on the last batch alone, the
  95% t interval of the mean difference lies below 0 and the mean gain is at least ``min_gain`` of
  the base's loss, and its lead did not shrink from the first to the last final step (a lead that
  fades by the end of the probe is no win). With the default
  cross-entropy, when the base starts far above chance (a first loss above 2 ln C for C classes:
  exploding logits) a win also needs its scored loss back below chance (ln C): until then the
  probe sees how fast a bad start is corrected, not learning. Else the base is kept: with
  the same random state, the model is then exactly what the base init gives.
- **Budget.** ``budget`` is a fraction of one training epoch: the probe runs at most
  ``budget * epoch_steps`` optimizer steps on the data's batches (a probe step costs one training
  step), and by default its whole wall time stays within ``budget`` of the epoch's time, estimated
  from the probe's own step time. Candidates are dropped from the end of the list until the screen
  and a final of at least two more steps fit; when not even one candidate fits, the base is kept
  with a note.

Factors that would overflow or underflow the weights' dtype, and candidates that do not apply to
the model (blockwise without blocks), are skipped with a note, never raised.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from emergeinit.init import BaseLike, apply_plan_, check_emergence_options
from emergeinit.layers import find_blocks, find_weight_layers
from emergeinit.options import NON_NEGATIVE, POSITIVE, Rule, at_least, check_values, one_of, optional
from emergeinit.plan import SCOPES, InitPlan, plan_emergence
from emergeinit.probe import layer_graph
from emergeinit.schedules import positive_number, resolve_schedule
from emergeinit.stats import Interval, paired_interval
from emergeinit.trace import fork_rng, is_batch, iter_batches, run_model, split_batch, to_device

__all__ = [
    "Candidate",
    "CandidateResult",
    "InitChoice",
    "choose_init",
    "auto_init_",
    "default_candidates",
    "check_auto_options",
    "AUTO_RULES",
    "DEFAULT_EPOCH_STEPS",
]

DEFAULT_EPOCH_STEPS = 469
"""Steps of one epoch assumed when neither ``epoch_steps`` nor ``len(data)`` gives it: 60,000
examples at batch 128 (Fashion-MNIST; CIFAR-10's 50,000 give 391). The result notes the assumption."""

Optimizer = Callable[[nn.Module], torch.optim.Optimizer]
LossFn = Callable[[Any, Any], torch.Tensor]


# ------------------------------------------------------------------------------------ candidates

@dataclass(frozen=True)
class Candidate:
    """One initialization to try: eq 8 with ``alpha``, ``schedule`` and ``scope`` on the base init.
    α = 1 is the base init itself, whatever the schedule and scope."""

    alpha: float
    schedule: str = "normalized"
    scope: str = "global"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", positive_number(self.alpha, "candidate alpha"))
        resolve_schedule(self.schedule)
        if self.scope not in SCOPES:
            raise ValueError(f"unknown candidate scope {self.scope!r}: use one of {', '.join(SCOPES)}")

    @property
    def is_base(self) -> bool:
        return self.alpha == 1.0

    @property
    def label(self) -> str:
        return "base (α=1)" if self.is_base else f"α={self.alpha:g} {self.schedule} {self.scope}"

    def to_dict(self) -> Dict[str, Any]:
        return {"alpha": self.alpha, "schedule": self.schedule, "scope": self.scope}

    @classmethod
    def parse(cls, spec: Union["Candidate", Dict[str, Any], float, int]) -> "Candidate":
        """A candidate from itself, a dict of its fields, or a number (α, normalized, global)."""
        if isinstance(spec, Candidate):
            return spec
        if isinstance(spec, dict):
            unknown = set(spec) - {"alpha", "schedule", "scope"}
            if unknown:
                raise ValueError(f"unknown candidate keys {sorted(unknown)}: use alpha, schedule, scope")
            if "alpha" not in spec:
                raise ValueError(f"candidate {spec!r} has no alpha")
            return cls(**spec)
        return cls(spec)


BASE = Candidate(1.0)


def default_candidates(model: nn.Module, example_input: Any = None) -> List[Candidate]:
    """The candidates :func:`choose_init` tries when none are given, most promising first (the
    budget drops them from the end): the base; normalized α = 2 globally, inside each block (when
    the model has blocks) and over the layer graph (when it has skip connections); then global
    α = 1.5 and 3, blockwise α = 5 and global α = 5 (the paper's value with batch norm). The
    literal schedule is left out: α^±8 on a 17-layer net did not train in any of our runs."""
    layers = find_weight_layers(model, example_input)
    try:
        has_blocks = bool(find_blocks(model, layers, example_input=example_input))
    except ValueError:  # no default blocks (it says what it looked for)
        has_blocks = False
    with warnings.catch_warnings():  # an untraceable model is a chain here: no graph candidate
        warnings.simplefilter("ignore")
        has_skips = not layer_graph(model, example_input).is_chain()
    out = [BASE, Candidate(2.0)]
    out += [Candidate(2.0, scope="blockwise")] if has_blocks else []
    out += [Candidate(2.0, scope="graph")] if has_skips else []
    out += [Candidate(1.5), Candidate(3.0)]
    out += [Candidate(5.0, scope="blockwise")] if has_blocks else []
    out += [Candidate(5.0)]
    return out


# ---------------------------------------------------------------------------------------- results

@dataclass
class CandidateResult:
    """What one candidate did in the probe.

    ``status``: ``chosen``, ``base`` (the reference; also chosen when nothing wins), ``finalist``
    (went on to the final and did not win), ``screened out``, ``diverged`` (NaN/inf loss or
    gradient), ``skipped`` (not applicable, or its factors leave the dtype's range: see ``note``),
    or ``not run`` (dropped to fit the budget). ``losses``: mean loss per step (step t measured on
    batch t before its update); ``grad_norms``: total gradient norm per step, before clipping.
    ``difference``: mean per-sample loss minus the base's over the scored batches, with its 95%
    interval (negative: better than the base).
    """

    candidate: Candidate
    status: str = "not run"
    note: str = ""
    losses: List[float] = field(default_factory=list)
    grad_norms: List[float] = field(default_factory=list)
    output_rms: Optional[float] = None
    difference: Optional[Interval] = None
    last_difference: Optional[Interval] = None  # the same on the last probe batch alone

    @property
    def steps(self) -> int:
        return len(self.losses)

    def to_dict(self) -> Dict[str, Any]:
        return {
            **self.candidate.to_dict(),
            "label": self.candidate.label,
            "status": self.status,
            "note": self.note,
            "steps": self.steps,
            "losses": [_json_float(v) for v in self.losses],
            "grad_norms": [_json_float(v) for v in self.grad_norms],
            "output_rms": _json_float(self.output_rms),
            "difference": self.difference.to_dict() if self.difference else None,
            "last_difference": self.last_difference.to_dict() if self.last_difference else None,
        }


def _json_float(v: Optional[float]) -> Optional[float]:
    return v if v is not None and math.isfinite(v) else None


@dataclass
class InitChoice:
    """The choice of :func:`choose_init` and its evidence: every candidate's result, the probe's
    shape and what it cost (steps, forward/backward passes, seconds, fraction of an epoch)."""

    chosen: Candidate
    results: List[CandidateResult]
    screen_steps: int
    final_steps: int
    score_steps: int
    min_gain: float
    epoch_steps: int
    epoch_assumed: bool
    budget: float
    steps_run: int
    seconds: float
    notes: List[str] = field(default_factory=list)
    init_options: Dict[str, Any] = field(default_factory=dict)
    step_seconds: Optional[float] = None  # the fastest probe training step, seconds (the budget's unit)
    plan: Optional[InitPlan] = None  # set by auto_init_ once applied

    @property
    def alpha(self) -> float:
        return self.chosen.alpha

    @property
    def schedule(self) -> str:
        return self.chosen.schedule

    @property
    def scope(self) -> str:
        return self.chosen.scope

    @property
    def budget_steps(self) -> float:
        return self.budget * self.epoch_steps

    @property
    def cost_fraction(self) -> float:
        """Probe steps over the steps of one epoch."""
        return self.steps_run / self.epoch_steps

    @property
    def time_fraction(self) -> Optional[float]:
        """The probe's whole wall time over an epoch's estimated time (its steps × the probe's
        fastest step); None when no step ran."""
        return self.seconds / (self.epoch_steps * self.step_seconds) if self.step_seconds else None

    def init_kwargs(self) -> Dict[str, Any]:
        """Keywords of :func:`emergeinit.emergence_init_` that give the chosen init."""
        return {**self.chosen.to_dict(), **self.init_options}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "chosen": {**self.chosen.to_dict(), "label": self.chosen.label},
            "candidates": [r.to_dict() for r in self.results],
            "screen_steps": self.screen_steps,
            "final_steps": self.final_steps,
            "score_steps": self.score_steps,
            "min_gain": self.min_gain,
            "cost": {
                "steps": self.steps_run, "forward_passes": self.steps_run, "backward_passes": self.steps_run,
                "seconds": self.seconds, "epoch_steps": self.epoch_steps, "epoch_assumed": self.epoch_assumed,
                "budget": self.budget, "budget_steps": self.budget_steps, "fraction_of_epoch": self.cost_fraction,
                "step_seconds": self.step_seconds, "time_fraction_of_epoch": self.time_fraction,
            },
            "notes": list(self.notes),
            "init_options": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                             for k, v in self.init_options.items()},
        }

    def __str__(self) -> str:
        head = ["candidate", "status", "steps", "loss (first → last)", "Δ loss vs base [95%]", "note"]
        rows = []
        for r in self.results:
            trend = f"{r.losses[0]:.4g} → {r.losses[-1]:.4g}" if r.losses else "-"
            rows.append([r.candidate.label, r.status, str(r.steps), trend,
                         str(r.difference) if r.difference else "-", r.note])
        widths = [max(len(row[j]) for row in [head] + rows) for j in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
        epoch = f"{self.epoch_steps} steps" + (" (assumed)" if self.epoch_assumed else "")
        lines = [
            f"InitChoice: {self.chosen.label}",
            f"probe: screen {self.screen_steps} steps, final {self.final_steps}, scored on the last "
            f"{self.score_steps} and on the last alone; a win needs both 95% intervals below 0 and gains "
            f">= {self.min_gain:g} of the base's loss",
            f"cost: {self.steps_run} steps ({self.cost_fraction:.1%} of an epoch of {epoch}; budget "
            f"{self.budget:g} = {self.budget_steps:.1f} steps), {self.seconds:.2f} s"
            + (f" ({self.time_fraction:.1%} of the epoch's time at {self.step_seconds * 1e3:.3g} ms a step, its fastest)"
               if self.time_fraction is not None else ""),
            fmt(head), fmt(["-" * w for w in widths]),
        ] + [fmt(r) for r in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ probe parts

def _batches(data: Any) -> Iterator[Tuple[Any, Any]]:
    """``data`` as a stream of ``(inputs, targets)``: one batch forever, or an iterable's batches."""
    if data is None:
        raise ValueError("choose_init needs data: one batch (inputs, targets) or an iterable of batches")
    return itertools.repeat(split_batch(data)) if is_batch(data) else iter_batches(data)


def _take(stream: Iterator[Tuple[Any, Any]], count: int, one_batch: bool, device: torch.device,
          notes: List[str]) -> List[Tuple[Any, Any]]:
    """``count`` batches of ``stream`` in order, on ``device``; an iterable that runs out is replayed
    from its first batch. The notes say when the later losses are not held out."""
    got = [(to_device(x, device), to_device(y, device)) for x, y in itertools.islice(stream, count)]
    if not got:
        raise ValueError("data gave no batch")
    if one_batch and count > 1:
        notes.append("one batch given: every probe step trains on it, so the scored losses are not "
                     "held out (they measure how fast each candidate fits that batch)")
    elif len(got) < count:
        notes.append(f"data gave {len(got)} batches for {count} probe steps: replayed in order, so the "
                     "later losses are not held out")
    return [got[i % len(got)] for i in range(count)]


def _logits(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output: itself, ``.logits`` (Hugging Face), or item 0."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"cannot read predictions from a model output of type {type(output).__name__}: pass loss_fn")


def _losses(output: Any, targets: Any, loss_fn: Optional[LossFn]) -> torch.Tensor:
    """Per-sample losses (1-D) when they can be had, else the batch loss as a 1-element tensor.

    Default: cross-entropy per example (per token for sequence outputs; targets -100 ignored), or
    a Hugging Face output's own ``.loss`` when there are no targets. A ``loss_fn`` may return
    per-sample losses or a scalar."""
    if loss_fn is not None:
        return loss_fn(output, targets).float().reshape(-1)
    if targets is None:
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            return loss.float().reshape(-1)
        raise ValueError("choose_init needs targets (data as (inputs, targets)), or a loss_fn")
    logits = _logits(output)
    flat_targets = targets.reshape(-1)
    per = F.cross_entropy(logits.float().reshape(flat_targets.numel(), -1), flat_targets, reduction="none")
    return per[flat_targets != -100]


def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """Adam at lr 1e-3, the paper's own setting (pass your training optimizer instead)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


@dataclass
class _Run:
    """A candidate's probe in progress: its model copy, optimizer, random state and losses."""

    result: CandidateResult
    model: Optional[nn.Module] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    rng: Any = None
    per_sample: List[torch.Tensor] = field(default_factory=list)  # per step
    chance: Optional[float] = None  # the loss of a uniform guess (default cross-entropy: ln C)

    @property
    def alive(self) -> bool:
        return self.model is not None and self.result.status not in ("diverged", "skipped")

    def drop(self) -> None:
        self.model = self.optimizer = None
        self.per_sample = []


def _rng_state(devices: Sequence[int]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state: Tuple[torch.Tensor, List[torch.Tensor]], devices: Sequence[int]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1]):
        torch.cuda.set_rng_state(s, d)


def _train(run: _Run, batches: Sequence[Tuple[Any, Any]], upto: int, loss_fn: Optional[LossFn],
           clip_grad_norm: Optional[float], devices: Sequence[int], step_seconds: List[float]) -> int:
    """Continue ``run`` to ``upto`` steps in all; returns the steps taken and appends each step's
    wall seconds to ``step_seconds``. Step t's loss is read before its update (held out). A
    NaN/inf loss or gradient marks the run diverged."""
    assert run.model is not None and run.optimizer is not None
    model, opt, res = run.model, run.optimizer, run.result
    params = [p for g in opt.param_groups for p in g["params"]]
    _set_rng_state(run.rng, devices)
    taken = 0
    model.train()
    for t in range(res.steps, upto):
        tick = time.perf_counter()
        inputs, targets = batches[t]
        output = run_model(model, inputs)
        per = _losses(output, targets, loss_fn)
        loss = per.mean()
        if t == 0 and loss_fn is None and targets is not None:  # the logits' scale at init, and chance
            logits = _logits(output).detach()
            res.output_rms = float(logits.double().pow(2).mean().sqrt())
            run.chance = math.log(logits.shape[-1])  # cross-entropy of a uniform guess over the classes
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, float(clip_grad_norm) if clip_grad_norm else math.inf))
        taken += 1
        res.losses.append(float(loss.detach()))  # syncs the device: the step's time is complete below
        res.grad_norms.append(norm)
        run.per_sample.append(per.detach())
        if not (math.isfinite(res.losses[-1]) and math.isfinite(norm)):
            res.status = "diverged"
            res.note = f"non-finite {'loss' if not math.isfinite(res.losses[-1]) else 'gradient'} at step {t + 1}"
            run.drop()
            return taken
        opt.step()
        step_seconds.append(time.perf_counter() - tick)
    run.rng = _rng_state(devices)
    return taken


def _plan_probe(n: int, budget_steps: float, screen_steps: int, final_min: int) -> Tuple[int, int]:
    """(candidates that fit, total steps of the final): the screen costs ``n * screen_steps``, the
    final ``2 * (final - screen_steps)``; at least ``final_min`` final steps."""
    while n >= 2 and n * screen_steps + 2 * final_min > budget_steps:
        n -= 1
    if n < 2:
        return n, 0
    return n, screen_steps + int((budget_steps - n * screen_steps) // 2)


def _epoch_steps(data: Any, epoch_steps: Optional[int]) -> Tuple[int, bool]:
    if epoch_steps is not None:
        return int(epoch_steps), False
    if not is_batch(data) and hasattr(data, "__len__"):
        return max(1, len(data)), False
    return DEFAULT_EPOCH_STEPS, True


# ------------------------------------------------------------------------------------ public API

AUTO_RULES: Dict[str, Rule] = {
    "budget": POSITIVE, "budget_unit": one_of("time", "steps"), "epoch_steps": optional(at_least(1)),
    "screen_steps": at_least(1), "min_gain": NON_NEGATIVE, "clip_grad_norm": optional(POSITIVE),
}
"""The option values of :func:`choose_init` a rule can check."""

_PROBE_ARGS = ("data", "loss_fn", "candidates", "optimizer", "example_input") + tuple(AUTO_RULES)


def check_auto_options(options: Mapping[str, Any]) -> None:
    """Check the options of :func:`choose_init` / ``initialize(..., "emergence", alpha="auto")``
    without a model: the probe's own (values by :data:`AUTO_RULES`, every candidate parsed) and the
    options every candidate's :func:`emergeinit.emergence_init_` gets (``base``, ``mode``,
    ``blocks``...). α, schedule and scope are what the probe chooses: giving ``schedule`` or
    ``scope`` is a TypeError (list them in ``candidates``). A ValueError for a bad value."""
    chosen = sorted(k for k in ("schedule", "scope") if k in options)
    if chosen:
        raise TypeError(f"alpha='auto' chooses {', '.join(chosen)}: put them in candidates instead")
    if options.get("alpha", "auto") != "auto":
        raise ValueError(f"check_auto_options is for alpha='auto', got alpha={options['alpha']!r}")
    check_values("choose_init", options, AUTO_RULES)
    for c in options.get("candidates") or ():
        Candidate.parse(c)
    rest = {k: v for k, v in options.items() if k not in _PROBE_ARGS and k != "alpha"}
    check_emergence_options({"alpha": 2.0, **rest})

def choose_init(
    model: nn.Module,
    data: Any,
    loss_fn: Optional[LossFn] = None,
    *,
    candidates: Optional[Iterable[Union[Candidate, Dict[str, Any], float]]] = None,
    budget: float = 0.05,
    budget_unit: str = "time",
    epoch_steps: Optional[int] = None,
    optimizer: Optional[Optimizer] = None,
    clip_grad_norm: Optional[float] = None,
    screen_steps: int = 2,
    min_gain: float = 0.01,
    base: BaseLike = "kaiming",
    example_input: Any = None,
    **init_options: Any,
) -> InitChoice:
    """Choose the emergence init (α, schedule, scope) for ``model`` by short training probes on
    ``data``, keeping the base init (α = 1) unless a candidate wins beyond noise (module doc).

    ``data``: one batch ``(inputs, targets)`` or an iterable of them (a DataLoader: its length is
    the epoch); inputs a tensor or a dict of keywords. ``loss_fn(output, targets)`` may return
    per-sample losses (best: the decision pairs samples) or a scalar; default cross-entropy.
    ``candidates``: :class:`Candidate` s, dicts of their fields, or numbers (α, normalized, global);
    default :func:`default_candidates`. The base is added when missing. ``budget``: the probe's
    cost as a fraction of an epoch of ``epoch_steps`` steps (default ``len(data)``, else
    :data:`DEFAULT_EPOCH_STEPS`, noted): at most ``budget * epoch_steps`` training steps, and with
    ``budget_unit="time"`` (default) its whole wall time, copies, traces and draws included, at
    most ``budget`` of the epoch's time estimated as ``epoch_steps`` × the probe's fastest step
    (candidates are dropped and the final shortened to fit; how many depends on the machine's
    speed). ``budget_unit="steps"`` counts steps only, so the choice depends only on the random
    state and the data. ``optimizer(model) -> torch.optim.Optimizer`` builds the
    optimizer you will train with (default Adam, lr 1e-3); ``clip_grad_norm`` clips as your training
    does. ``base``, ``example_input`` and ``init_options`` (e.g. ``mode="fan_out"``, ``blocks=``)
    go to every candidate's :func:`emergeinit.emergence_init_`.

    The model, its buffers and the global random state are left as they were: the probe runs on
    deep copies inside :func:`torch.random.fork_rng`, each candidate drawn from the random state of
    the call. Apply the result with :func:`auto_init_` (or ``emergence_init_(model,
    **choice.init_kwargs())`` from the same random state).
    """
    check_auto_options(dict(candidates=candidates, budget=budget, budget_unit=budget_unit, epoch_steps=epoch_steps,
                            screen_steps=screen_steps, min_gain=min_gain, clip_grad_norm=clip_grad_norm, base=base,
                            **init_options))
    budget, min_gain = float(budget), float(min_gain)
    by_time = budget_unit == "time"
    epochs, assumed = _epoch_steps(data, epoch_steps)
    stream = _batches(data)
    first = next(stream, None)
    if first is None:
        raise ValueError("data gave no batch")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = example_input if example_input is not None else to_device(first[0], device)
    notes: List[str] = []
    # The base's plan and the default candidates come first and off the clock: their traces are the
    # first of a fresh process, which imports torch's fx and decomposition machinery (seconds, once
    # per process, whatever the init); warm, they take a fraction of a step.
    plans: Dict[Tuple[str, str], InitPlan] = {  # exponents per (schedule, scope): one trace each
        (BASE.schedule, BASE.scope): plan_emergence(model, alpha=2.0, schedule=BASE.schedule, scope=BASE.scope,
                                                    example_input=example, **_plan_options(init_options))}
    if candidates is None:
        tried = default_candidates(model, example)
    else:
        tried = [Candidate.parse(c) for c in candidates]
    t0 = time.perf_counter()
    if assumed:
        notes.append(f"epoch length unknown (one batch, or data without len): assumed {epochs} steps; "
                     "pass epoch_steps= for yours")
    tried = [BASE] + [c for c in dict.fromkeys(tried) if not c.is_base]
    init_options = {"base": base, **init_options}
    devices = sorted({p.get_device() for p in model.parameters() if p.is_cuda})
    results = [CandidateResult(c) for c in tried]

    fit, final_steps = _plan_probe(len(tried), budget * epochs, screen_steps, final_min=2)
    for r in results[fit:]:
        r.note = "dropped to fit the budget"
    if fit < 2:
        results[0].status = "chosen"
        notes.append(f"a budget of {budget * epochs:.1f} steps cannot screen one candidate against the base "
                     f"({2 * screen_steps + 4} steps needed): the base is kept without a probe")
        return InitChoice(BASE, results, screen_steps, 0, 0, min_gain, epochs, assumed, budget, 0,
                          time.perf_counter() - t0, notes, init_options)
    make_optimizer = optimizer or default_optimizer

    steps_run = 0
    with fork_rng(model):
        start = _rng_state(devices)
        batches = _take(itertools.chain([first], stream), final_steps, is_batch(data), device, notes)

        def launch(res: CandidateResult) -> _Run:
            _set_rng_state(start, devices)
            c = res.candidate
            try:
                if (c.schedule, c.scope) not in plans:
                    plans[c.schedule, c.scope] = plan_emergence(
                        model, alpha=2.0, schedule=c.schedule, scope=c.scope, example_input=example,
                        **_plan_options(init_options))
                plan = plans[c.schedule, c.scope].with_alpha(c.alpha)
                twin = copy.deepcopy(model)
                apply_plan_(twin, plan, base=init_options["base"], **_base_options(init_options))
            except ValueError as err:
                if res.candidate.is_base:
                    raise
                res.status, res.note = "skipped", str(err)
                return _Run(res)
            return _Run(res, twin, make_optimizer(twin), _rng_state(devices))

        step_seconds: List[float] = []
        base_run = launch(results[0])
        steps_run += _train(base_run, batches, screen_steps, loss_fn, clip_grad_norm, devices, step_seconds)
        if not base_run.alive:
            raise FloatingPointError(f"choose_init: the base init itself diverged ({results[0].note}): "
                                     "check the data, the loss and the learning rate")
        # the budget in seconds: that fraction of an epoch of steps as long as the probe's own steps;
        # copies, traces and draws count against it
        launch_seconds = time.perf_counter() - t0 - sum(step_seconds)  # what the first launch cost
        best: Optional[_Run] = None
        for res in results[1:fit]:
            step = min(step_seconds)
            needed = time.perf_counter() - t0 + launch_seconds + (screen_steps + 2 * 2) * step
            if by_time and needed > budget * epochs * step:
                res.note = "dropped to fit the budget (time)"
                continue
            run = launch(res)
            if run.model is not None:
                steps_run += _train(run, batches, screen_steps, loss_fn, clip_grad_norm, devices, step_seconds)
            if not run.alive:
                continue
            res.status = "screened out"
            if best is None or _last_loss(run) < _last_loss(best):
                if best is not None:
                    best.drop()
                best = run
            else:
                run.drop()
        chosen = BASE
        step = min(step_seconds)
        if by_time:
            left = int((budget * epochs * step - (time.perf_counter() - t0)) // (2 * step))
            final_steps = screen_steps + max(0, min(final_steps - screen_steps, left))
        score_steps = max(1, (final_steps - screen_steps + 1) // 2)
        if best is None:
            notes.append("no candidate survived the screen: the base is kept")
        elif final_steps == screen_steps:
            notes.append("no time left for the final after the screen: the base is kept")
        else:
            best.result.status = "finalist"
            steps_run += _train(base_run, batches, final_steps, loss_fn, clip_grad_norm, devices, step_seconds)
            steps_run += _train(best, batches, final_steps, loss_fn, clip_grad_norm, devices, step_seconds)
            if best.alive:
                chosen = _decide(base_run, best, score_steps, min_gain, notes, final_steps - screen_steps)
            best.drop()
        base_run.drop()
    results[0].status = "chosen" if chosen.is_base else "base"
    return InitChoice(chosen, results, screen_steps, final_steps, score_steps, min_gain, epochs, assumed,
                      budget, steps_run, time.perf_counter() - t0, notes, init_options,
                      step_seconds=min(step_seconds))


def _last_loss(run: _Run) -> float:
    return float(run.per_sample[-1].mean())


def _win(ours: torch.Tensor, theirs: torch.Tensor, min_gain: float) -> Tuple[Interval, Optional[str]]:
    """The paired interval of ``ours - theirs`` and why it is no win (None: a win): its 95% interval
    must lie below 0 and its mean gain be at least ``min_gain`` of ``theirs``' mean loss."""
    diff = paired_interval((ours.double() - theirs.double()).tolist())
    needed = min_gain * abs(float(theirs.double().mean()))
    if diff.high is None:
        return diff, "one paired loss: no interval"
    if diff.high >= 0:
        return diff, "its 95% interval reaches 0"
    if -diff.mean < needed:
        return diff, f"its gain {-diff.mean:.3g} < {needed:.3g}"
    return diff, None


def _decide(base: _Run, finalist: _Run, score_steps: int, min_gain: float, notes: List[str],
            final_stage: int = 0) -> Candidate:
    """The finalist when it beats the base beyond noise and by at least ``min_gain`` of the base's
    loss both over the last ``score_steps`` batches (per-sample losses paired) and on the last batch
    alone (a lead that is fading by the end of the probe is no win), and when its lead did not
    shrink from the first to the last of the ``final_stage`` steps; else the base."""
    theirs = torch.cat(base.per_sample[-score_steps:])
    pooled, why = _win(torch.cat(finalist.per_sample[-score_steps:]), theirs, min_gain)
    last, why_last = _win(finalist.per_sample[-1], base.per_sample[-1], min_gain)
    finalist.result.difference, finalist.result.last_difference = pooled, last
    start = base.result.losses[0] if base.result.losses else math.nan
    if why is None and base.chance is not None and start > 2 * base.chance and float(theirs.mean()) >= base.chance:
        why = (f"the base started far above chance ({start:.3g} > 2 ln C = {2 * base.chance:.3g}) and is still "
               f"above it ({float(theirs.mean()):.3g}): the probe saw a bad start corrected, not learning")
    stage = zip(finalist.per_sample[-final_stage:], base.per_sample[-final_stage:]) if final_stage >= 2 else ()
    gains = [float((b.double() - f.double()).mean()) for f, b in stage]
    if why is None and why_last is None and len(gains) >= 2 and gains[-1] < gains[0]:
        why = (f"its lead shrank over the final ({gains[0]:.3g} -> {gains[-1]:.3g} nats): a lead that fades within "
               "a few steps did not last the epoch in our checks")
    if why is None and why_last is None:
        finalist.result.status = "chosen"
        return finalist.result.candidate
    if pooled.high is None and last.high is None:
        notes.append("one loss per step (a scalar loss_fn) and one scored step: no interval, the base is kept")
    finalist.result.note = f"no win: {why}" if why else f"no win on the last batch: {why_last}"
    return BASE


_PLAN_KEYS = tuple(n for n in inspect.signature(plan_emergence).parameters
                   if n not in ("model", "alpha", "schedule", "scope", "example_input"))
"""Options of every candidate's plan (``blocks``, ``norms``, ``graph_depth``...); the rest go to the base draw."""


def _plan_options(options: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in options.items() if k in _PLAN_KEYS}


def _base_options(options: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _PLAN_KEYS and k != "base"}


def auto_init_(model: nn.Module, data: Any, loss_fn: Optional[LossFn] = None, **options: Any) -> InitChoice:
    """:func:`choose_init`, then the chosen init applied to ``model`` in place from the random state
    of the call (the same weights as ``emergence_init_`` with the chosen α, schedule and scope;
    with α = 1, the base init itself). Returns the choice with its ``plan`` set."""
    choice = choose_init(model, data, loss_fn, **options)
    options_used = choice.init_options
    plan = plan_emergence(model, alpha=choice.alpha, schedule=choice.schedule, scope=choice.scope,
                          example_input=options.get("example_input"), **_plan_options(options_used))
    plan.meta["base"] = options_used["base"] if isinstance(options_used["base"], (str, type(None))) else repr(
        options_used["base"])
    choice.plan = apply_plan_(model, plan, base=options_used["base"], **_base_options(options_used))
    return choice
