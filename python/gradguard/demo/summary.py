"""From the runs' records to the tables and to a verdict on each claim.

A group is one configuration at one depth (or sequence length) with one
optimiser, over all its seeds. Its row reports the median and the range
(min-max) of the final loss and test accuracy, and how many runs converged
or diverged. A claim's verdict is computed from the groups by a fixed rule
(TRAINS: at least 80% of the runs converge; FAILS: at most 20%), never written
by hand, so the report says what this run measured."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .experiments import (
    ARCHITECTURE_LABELS,
    CLIP_METHODS,
    HIGH_LR,
    INIT_DEPTH,
    OPTIMISERS,
    SOLVED_MSE,
)

TRAINS, FAILS = 0.8, 0.2


@dataclass
class Group:
    experiment: str
    config: str
    size: int  # depth or sequence length
    optimiser: str
    records: list

    def values(self, key):
        return np.array([np.nan if r[key] is None else r[key] for r in self.records], dtype=np.float64)

    @property
    def rate(self) -> float:
        return sum(r["converged"] for r in self.records) / len(self.records)

    @property
    def converged(self) -> int:
        return sum(r["converged"] for r in self.records)

    @property
    def diverged(self) -> int:
        return sum(r["diverged"] for r in self.records)

    def median(self, key):
        values = self.values(key)
        finite = values[np.isfinite(values)]
        return float(np.median(finite)) if finite.size else math.nan

    def spread(self, key):
        """'median [min-max]' over the finite values (diverged runs are counted apart)."""
        values = self.values(key)
        finite = values[np.isfinite(values)]
        if not finite.size:
            return "-"
        return f"{_short(np.median(finite))} [{_short(finite.min())}-{_short(finite.max())}]"

    def finding(self):
        """The commonest first finding ("kind at layer, median step") and how many runs had one."""
        found = [r["first_finding"] for r in self.records if r.get("first_finding")]
        if not found:
            return "none"
        kind, _ = Counter(f["kind"] for f in found).most_common(1)[0]
        steps = [f["step"] for f in found if f["kind"] == kind]
        return f"{kind} in {len(steps)}/{len(self.records)}, step {int(np.median(steps))}"


def _short(value):
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def groups(records):
    """Records grouped by (experiment, config, size, optimiser), in plan order."""
    found = {}
    for record in records:
        size = record["depth"] or record["length"]
        key = (record["experiment"], record["config"], size, record["optimiser"])
        if key not in found:
            found[key] = Group(record["experiment"], record["config"], size, record["optimiser"], [])
        found[key].records.append(record)
    return list(found.values())


def find(all_groups, experiment, config=None, size=None, optimiser=None):
    return [
        g
        for g in all_groups
        if g.experiment == experiment
        and (config is None or g.config == config)
        and (size is None or g.size == size)
        and (optimiser is None or g.optimiser == optimiser)
    ]


# ---- tables ----------------------------------------------------------------------------------


def _columns(experiment):
    """(header, cell of a group) for each column of an experiment's table."""
    converged = lambda g: f"{g.converged}/{len(g.records)}"  # noqa: E731
    diverged = lambda g: f"{g.diverged}/{len(g.records)}"  # noqa: E731
    optimiser = lambda g: _optimiser_label(g.optimiser)  # noqa: E731
    finding = ("first flag", Group.finding)
    if experiment == "init":
        return [
            ("configuration", lambda g: g.config),
            ("grad norm layer 1 / layer L at init", lambda g: g.spread("grad_ratio_first_last")),
            ("converged", converged),
            ("test accuracy", lambda g: g.spread("test_accuracy")),
            ("test loss", lambda g: g.spread("final_loss")),
            finding,
        ]
    if experiment in ("recurrent", "exploding"):
        return [
            ("network", lambda g: g.config),
            ("length", lambda g: str(g.size)),
            ("optimiser", optimiser),
            ("solved", converged),
            ("diverged", diverged),
            ("test MSE", lambda g: g.spread("final_loss")),
            ("max grad norm", lambda g: g.spread("max_grad_norm")),
            finding,
        ]
    columns = [
        ("configuration", lambda g: g.config),
        ("depth", lambda g: str(g.size)),
        ("optimiser", optimiser),
        ("converged", converged),
        ("diverged", diverged),
        ("test accuracy", lambda g: g.spread("test_accuracy")),
        ("test loss", lambda g: g.spread("final_loss")),
        finding,
    ]
    return columns + ([("guard actions", _actions)] if experiment == "high_lr" else [])


def table(all_groups, experiment):
    """(header, rows) of one experiment's table, as strings."""
    columns = _columns(experiment)
    rows = [[cell(g) for _, cell in columns] for g in find(all_groups, experiment)]
    return [name for name, _ in columns], rows


def _optimiser_label(key):
    if key == "plain_sgd":
        return "SGD"
    return OPTIMISERS[key][0] if key in OPTIMISERS else key


def _actions(group):
    counts = Counter(a["action"] for r in group.records for a in r.get("guard_actions", []))
    return ", ".join(f"{n} {action}" for action, n in counts.most_common()) or "-"


def format_text(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths))]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- claims ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    claim: str
    verdict: str  # "confirmed", "refuted", "holds only ...", "not measured"
    evidence: str


def _rate_text(group_list):
    converged = sum(g.converged for g in group_list)
    runs = sum(len(g.records) for g in group_list)
    return f"{converged}/{runs}"


def _rate(group_list):
    runs = sum(len(g.records) for g in group_list)
    return sum(g.converged for g in group_list) / runs if runs else math.nan


def _trains(group_list):
    return bool(group_list) and _rate(group_list) >= TRAINS


def _fails(group_list):
    return bool(group_list) and _rate(group_list) <= FAILS


def _init_claims(all_groups):
    verdicts = []
    if not find(all_groups, "init"):
        return verdicts

    def cell(activation, scheme):
        return find(all_groups, "init", f"{activation} + {scheme}")

    small = [g for g in find(all_groups, "init") if g.config.endswith("normal0.01")]
    sigmoid_small = cell("sigmoid", "normal0.01")
    ratios = np.concatenate([g.values("grad_ratio_first_last") for g in sigmoid_small]) if sigmoid_small else []
    medians = np.concatenate([g.values("median_hidden_grad_norm") for g in small]) if small else []
    vanishing = len(ratios) and np.nanmax(ratios) < 1e-3
    all_fail = _fails(small)
    verdicts.append(
        Verdict(
            "Small random weights (N(0, 0.01)) make gradients vanish and the network does not train.",
            "confirmed" if vanishing and all_fail else ("holds only for sigmoid" if vanishing else "refuted"),
            f"depth {INIT_DEPTH}: sigmoid |g1|/|gL| at init at most {np.nanmax(ratios):.1e}; hidden-layer gradient "
            f"norms at most {np.nanmax(medians):.1e} for every activation; converged {_rate_text(small)}",
        )
    )
    matched = {"tanh": "xavier", "relu": "he", "leaky_relu": "he", "sigmoid": "xavier"}
    trained = {a: _trains(cell(a, s)) for a, s in matched.items() if cell(a, s)}
    if trained:
        holding = [a for a, ok in trained.items() if ok]
        failing = [a for a, ok in trained.items() if not ok]
        evidence = "; ".join(f"{a} + {matched[a]} {_rate_text(cell(a, matched[a]))}" for a in trained)
        relu_xavier, relu_he = cell("relu", "xavier"), cell("relu", "he")
        if relu_xavier and relu_he:
            evidence += (
                f"; ReLU + xavier {_rate_text(relu_xavier)} (median accuracy {relu_xavier[0].median('test_accuracy'):.3f})"
                f" against ReLU + he (median {relu_he[0].median('test_accuracy'):.3f})"
            )
        verdicts.append(
            Verdict(
                "Xavier/Glorot suits sigmoid and tanh; He/Kaiming suits ReLU.",
                "confirmed" if not failing else ("holds only for " + ", ".join(holding) if holding else "refuted"),
                evidence
                + (f"; {', '.join(failing)} fail at depth {INIT_DEPTH} with the matched scheme" if failing else ""),
            )
        )
    lsuv = {a: cell(a, "lsuv") for a in ("sigmoid", "tanh", "relu", "leaky_relu") if cell(a, "lsuv")}
    if lsuv:
        holding = [a for a, g in lsuv.items() if _trains(g)]
        verdicts.append(
            Verdict(
                "LSUV (data-driven unit variance) makes any activation trainable.",
                "confirmed"
                if len(holding) == len(lsuv)
                else ("holds only for " + ", ".join(holding) if holding else "refuted"),
                "; ".join(f"{a} {_rate_text(g)}" for a, g in lsuv.items()),
            )
        )
    return verdicts


def _depth_claims(all_groups):
    verdicts = []
    depth_groups = find(all_groups, "depth")
    if not depth_groups:
        return verdicts
    deepest = max(g.size for g in depth_groups)

    def at(architecture, size=None):
        return find(all_groups, "depth", ARCHITECTURE_LABELS[architecture], size)

    def summary(architecture):
        sizes = sorted({g.size for g in at(architecture)})
        return ", ".join(f"{s}: {_rate_text(at(architecture, s))}" for s in sizes)

    residual_kinds = ("residual", "preln", "highway")
    deep_ok = [a for a in residual_kinds if _trains(at(a, deepest))]
    plain_fails = _fails(at("plain", deepest))
    if deep_ok and plain_fails:
        verdict = (
            "confirmed"
            if len(deep_ok) == len(residual_kinds)
            else "holds only with " + ", ".join(ARCHITECTURE_LABELS[a] for a in deep_ok)
        )
    else:
        verdict = "refuted"
    verdicts.append(
        Verdict(
            "Residual (skip) connections let deep networks train: convergence rate by depth without / with them.",
            verdict,
            "converged by depth, SGD and Adam together: "
            + "; ".join(f"{ARCHITECTURE_LABELS[a]} ({summary(a)})" for a in ("plain",) + residual_kinds),
        )
    )
    normalised = [a for a in ("layer_norm", "batch_norm") if _trains(at(a, deepest))]
    verdicts.append(
        Verdict(
            "Normalisation (layer or batch norm) alone lets deep networks train.",
            "confirmed"
            if len(normalised) == 2
            else (
                "holds only for " + ", ".join(normalised)
                if normalised
                else ("holds only with a residual connection (pre-LN)" if _trains(at("preln", deepest)) else "refuted")
            ),
            "; ".join(f"{ARCHITECTURE_LABELS[a]} ({summary(a)})" for a in ("layer_norm", "batch_norm", "preln"))
            + _explosion_at_init(at("batch_norm", deepest)),
        )
    )
    highway = at("highway", deepest)
    verdicts.append(
        Verdict(
            f"Highway networks (gated skip, negative gate bias) train at depth {deepest}.",
            "confirmed" if _trains(highway) else ("refuted" if _fails(highway) else "inconclusive"),
            f"highway ({summary('highway')}), "
            + ", ".join(f"{_optimiser_label(g.optimiser)} {g.converged}/{len(g.records)}" for g in highway)
            + f" at depth {deepest}",
        )
    )
    return verdicts


def _explosion_at_init(group_list):
    ratios = np.concatenate([g.values("grad_ratio_first_last") for g in group_list]) if group_list else []
    if len(ratios) and np.nanmin(ratios) > 1e3:
        return f"; batch norm's gradients explode towards the input at init (|g1|/|gL| >= {np.nanmin(ratios):.1e})"
    return ""


def _recurrent_claims(all_groups):
    verdicts = []
    rnn, lstm = find(all_groups, "recurrent", "tanh RNN"), find(all_groups, "recurrent", "LSTM")
    if rnn and lstm:
        decay = {}
        for label, group_list in (("RNN", rnn), ("LSTM", lstm)):
            longest = max(group_list, key=lambda g: g.size)
            ratios = [
                r["grad_norm_by_distance"][-1] / r["grad_norm_by_distance"][0]
                for r in longest.records
                if r["grad_norm_by_distance"] and r["grad_norm_by_distance"][0]
            ]
            decay[label] = (longest.size, float(np.median(ratios)) if ratios else math.nan)
        rnn_vanishes = decay["RNN"][1] < 1e-2  # less than 1% of the gradient reaches the farthest input
        verdicts.append(
            Verdict(
                "In a vanilla RNN the gradient vanishes with the distance in time steps; the LSTM carries it.",
                "confirmed" if rnn_vanishes and decay["LSTM"][1] > 10 * decay["RNN"][1] else "refuted",
                "||dL/dx_t|| at the first step over the last, at init, median over seeds: "
                + ", ".join(f"{k} (length {n}) {v:.1e}" for k, (n, v) in decay.items()),
            )
        )
        solved_by_lstm_only = [
            g.size for g in lstm if _trains([g]) and any(r.size == g.size and _fails([r]) for r in rnn)
        ]
        verdicts.append(
            Verdict(
                "The LSTM solves long-range tasks where the vanilla RNN fails.",
                "confirmed" if solved_by_lstm_only else "refuted",
                f"adding problem, solved (test MSE <= {SOLVED_MSE}): "
                + "; ".join(
                    f"length {g.size}: RNN {_rate_text([r for r in rnn if r.size == g.size])}, LSTM {_rate_text([g])}"
                    for g in lstm
                ),
            )
        )
    exploding = find(all_groups, "exploding")
    if len(exploding) == 2:
        unclipped, clipped = exploding
        verdicts.append(
            Verdict(
                "Clipping by the global norm stops exploding gradients from wrecking an RNN (Pascanu et al., 2013).",
                "confirmed"
                if unclipped.diverged > 0 and clipped.diverged == 0 and _trains([clipped])
                else (
                    "holds only for divergence: clipping keeps the run finite but does not make it learn"
                    if unclipped.diverged > 0 and clipped.diverged == 0
                    else "refuted"
                ),
                f"{unclipped.config}: diverged {unclipped.diverged}/{len(unclipped.records)}, max norm "
                f"{unclipped.spread('max_grad_norm')}; {clipped.config}: diverged {clipped.diverged}/"
                f"{len(clipped.records)}, solved {clipped.converged}/{len(clipped.records)}, test MSE "
                f"{clipped.spread('final_loss')}",
            )
        )
    return verdicts


def _high_lr_claims(all_groups):
    chosen = {g.config: g for g in find(all_groups, "high_lr")}
    if len(chosen) < 2:
        return []
    none = chosen.get(CLIP_METHODS["none"])
    verdicts = []
    for key in ("global", "zclip", "guard"):
        group = chosen.get(CLIP_METHODS[key])
        if group is None or none is None:
            continue
        better = group.rate >= TRAINS and none.rate <= group.rate - 0.4
        verdicts.append(
            Verdict(
                f"{CLIP_METHODS[key]} rescues training at too high a learning rate (SGD, lr {HIGH_LR:g}).",
                "confirmed" if better else ("refuted" if group.rate <= none.rate else "inconclusive"),
                f"converged {group.converged}/{len(group.records)} against {none.converged}/{len(none.records)} "
                f"without clipping; median accuracy {group.median('test_accuracy'):.3f} against "
                f"{none.median('test_accuracy'):.3f}",
            )
        )
    return verdicts


def verdicts(records):
    all_groups = groups(records)
    return (
        _init_claims(all_groups)
        + _depth_claims(all_groups)
        + _recurrent_claims(all_groups)
        + _high_lr_claims(all_groups)
    )


__all__ = ["groups", "find", "table", "format_text", "format_markdown", "verdicts", "Verdict"]
