"""Regressions between two runs: job by job, relative change of the median latency with a confidence interval.

Matching
========
A job of the candidate run is compared with *the same job* of the baseline
run: the same ``job_key`` minus the run, i.e. the same model entry, variant,
format, device, runtime, runtime options and batch size
(``results.records.job_key``).  Jobs whose key has no partner (a model entry
renamed in bench.toml, say) are then matched on the record's identity tuple
(timm ``model``, ``variant``, ``format``, ``device``, ``runtime``, runtime
options, ``batch_size``), preferring the baseline record whose artifact sha256
equals the candidate's; an ambiguous identity (two baseline records, neither
with the same artifact) stays unmatched rather than guessed.

A changed artifact hash is *not* a reason to skip a pair: a re-export, a new
exporter or a new pruning plan is exactly what a regression report is for.  It
is reported as a column (``artifact_changed``) next to the change it caused.

Jobs present in only one run are listed separately (``only_baseline``,
``only_candidate``), and so are pairs with an error on either side
(``status_changes``): ``ok -> error`` counts as a regression, ``error -> ok``
as fixed, ``error -> error`` as still failing.

Statistics
==========
For each pair of ok records the change is ``median(candidate) / median(baseline) - 1``
from the raw per-iteration samples (``samples_ns``), with a bootstrap
confidence interval (95 % by default) of that ratio of medians
(``results.intervals.change_interval``):

* The median, because it is what every table of this project reports and it
  shrugs off the rare 10x iteration (a context switch, a GC, a page fault).
* A bootstrap, because latency samples are skewed, multimodal and heavy-tailed:
  no normal-theory formula for the variance of a median fits them, and the
  ratio of two medians has no closed form anyway.  Each run is resampled on its
  own (the runs are independent), 2000 times by default, with a
  ``numpy.random.Generator`` seeded from ``seed`` and the job key, so a report
  is reproducible and does not depend on the order of the jobs.  The interval
  is the percentile interval of ``log(median*_c / median*_b)``, mapped back.
* **Rounds, when both records have them** (schema 4, agent protocol 2: the
  samples of each record carry their interleaved round): each record's
  rounds are resampled (a cluster bootstrap of the median of the pooled
  samples of the drawn rounds), each record on its own since two runs share no
  rounds, with the small-sample correction of ``results.intervals`` (method
  ``rounds``; at least ``results.intervals.MIN_ROUNDS`` rounds each).  A round
  is the unit over which the device's state stays put, so this counts the
  round-to-round variation a run really has, which a bootstrap of samples
  within one block cannot see.  Older records (and records with fewer rounds)
  keep the block bootstrap below (method ``blocks``).
* **Time-ordering aware**: the samples are a time series, and on real devices
  they are autocorrelated (thermal drift, DVFS, a background task that runs for
  a second).  An i.i.d. bootstrap then treats a burst of 300 slow iterations
  as 300 independent pieces of evidence and gives intervals far too narrow: on
  AR(1) noise with ρ = 0.9 its "95 %" interval of a zero change excluded zero
  in 16 of 30 seeded trials (the block bootstrap below: 6 of 30).  So the resampling is a *circular block bootstrap*: blocks
  of ``b`` consecutive iterations, ``b`` chosen per run by the Politis & White
  (2004, with Patton et al. 2009's correction) rule from the autocorrelation
  of the samples' ranks (ranks: a few huge outliers must not decide the block
  length).  On independent samples the rule gives ``b`` ≈ 1, i.e. the plain
  bootstrap; on a drifting run it gives long blocks and honest, wide intervals.

What the interval does *not* cover is run-to-run variation that is constant
within a run: another process on the machine all night, a different clock,
another memory layout.  Five runs of identical code on this project's shared
2-core test machine differed pairwise by up to 8 % in median, with within-run
intervals of ±0.5 %.  That is what the threshold is for, and why it is
configurable per sweep (``[sweeps.NAME] threshold``): 5 % suits a dedicated,
quiet lab device; a shared machine needs more (measure it: compare two runs of
unchanged code).

Classification
==============
With the relative threshold ``t`` (default 0.05) and the interval
``[lo, hi]`` of the change:

* **regressed** iff ``lo > +t`` (the whole interval is above +t),
* **improved**  iff ``hi < -t`` (the whole interval is below -t),
* **unchanged** otherwise; ``conclusive`` says whether the interval lies
  entirely inside ``[-t, +t]`` (it really is unchanged) or straddles a
  threshold (the data cannot tell; the report shows it as *inconclusive*, and
  it does not fail the run).

Why this rule and not "point estimate > t and the interval excludes 0": ours
is a one-sided test of "the slowdown is larger than t" at level 2.5 %, so a
job whose true change is anywhere at or below +t is flagged at most 2.5 % of
the time, whatever the noise; a nightly job that cries wolf gets ignored.  The
alternative flags a job whose true change is exactly t half the time, and in
heavy noise it flags on the point estimate alone, when the data are equally
consistent with a 1 % change ("10 % buried in 30 % noise" gets flagged).  The
price is power: a change is flagged once ``change - t`` exceeds about two
standard errors; with this project's measurement settings (≥ 1000 iterations,
cv of a few %, standard error of the log ratio ≈ 1.25·cv·sqrt(2/n) ≈ 0.2 %) a
true 6 % slowdown is already caught, and a 10 % one always.  Measured (tests/
test_regression.py, 100 seeded same-distribution pairs, cv 5 %, half of them
AR(1)-correlated): 0 flagged at t = 5 %; with t = 0, i.e. a bare significance
test, 6 of 100 (the interval is honest; the threshold is not hiding a broken
interval).  A 10 % slowdown at cv 2 % and 1000 iterations: flagged in 50 of
50 seeds; a 10 % change in cv 30 % noise with 50 iterations: 15 of 200 (the
alternative rule: 44 of 200).

Consequence for ``bench nightly --promote``: the baseline moves every night
that passes, so a creep of less than t per night is never flagged; compare
with a fixed release baseline (``bench compare``) now and then.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from results import intervals
from results.records import options_key

DEFAULT_THRESHOLD = 0.05


def parse_threshold(text: str) -> float:
    """A relative threshold as users write it, ``0.05`` or ``5%``; ValueError with a one-line message."""
    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"threshold {text!r} must be a fraction like 0.05 or a percentage like 5%") from None
    if not 0 <= value < 1:
        raise ValueError(f"threshold {text!r} must be at least 0 and below 1 (100 %)")
    return value


#: The block bootstrap of samples lives in results.intervals (with the round bootstrap); these names stay here too.
DEFAULT_CONFIDENCE = intervals.DEFAULT_CONFIDENCE
DEFAULT_RESAMPLES = intervals.DEFAULT_RESAMPLES
DEFAULT_SEED = intervals.DEFAULT_SEED
MIN_SAMPLES = intervals.MIN_SAMPLES
block_length = intervals.block_length
bootstrap_log_medians = intervals.bootstrap_log_medians
relative_change = intervals.relative_change
Change = intervals.Change

VERDICTS = ("regressed", "improved", "unchanged")
IDENTITY_FIELDS = ("model", "variant", "format", "device", "runtime", "runtime_options", "batch_size")


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

def classify(ci_low: float | None, ci_high: float | None, threshold: float = DEFAULT_THRESHOLD) -> tuple[str, bool]:
    """``(verdict, conclusive)`` of a change's interval; see the module docstring for the rule."""
    if ci_low is None or ci_high is None:
        return "unchanged", False
    if ci_low > threshold:
        return "regressed", True
    if ci_high < -threshold:
        return "improved", True
    return "unchanged", (ci_low >= -threshold and ci_high <= threshold)


# --------------------------------------------------------------------------
# Comparing runs
# --------------------------------------------------------------------------

@dataclass
class JobIdentity:
    """What names a job in both runs (the fields of its job key) and its short label."""

    job_key: str
    model: str
    variant: str
    format: str
    device: str
    runtime: str
    options: str
    batch_size: int

    @property
    def label(self) -> str:
        return job_label(self.__dict__)


@dataclass
class Pair(JobIdentity):
    """One job measured ok in both runs."""

    baseline_ms: float
    candidate_ms: float
    change: float
    ci_low: float | None
    ci_high: float | None
    verdict: str
    conclusive: bool
    n_baseline: int
    n_candidate: int
    block_baseline: int | None
    block_candidate: int | None
    baseline_sha256: str
    candidate_sha256: str
    artifact_changed: bool
    matched_by: str               # "job_key" or "identity"
    notes: list[str] = field(default_factory=list)
    method: str = "blocks"        # what the interval resampled: "rounds", "blocks" or "none" (results.intervals)
    rounds_baseline: int | None = None
    rounds_candidate: int | None = None


@dataclass
class StatusChange(JobIdentity):
    """A job with an error record in at least one of the runs."""

    baseline_status: str
    candidate_status: str
    kind: str                     # "ok->error" (a regression), "error->ok" (fixed), "error->error"
    message: str
    baseline_ms: float | None = None
    artifact_changed: bool = False

    @property
    def is_regression(self) -> bool:
        return self.kind == "ok->error"


@dataclass
class Comparison:
    """Every job of two runs, compared (see :func:`compare_records`)."""

    baseline_run: dict[str, Any]
    candidate_run: dict[str, Any]
    threshold: float
    confidence: float
    resamples: int
    seed: int
    pairs: list[Pair]
    status_changes: list[StatusChange]
    only_baseline: list[dict[str, Any]]
    only_candidate: list[dict[str, Any]]

    @property
    def regressions(self) -> list[Pair]:
        """Regressed pairs, worst (largest lower bound) first."""
        return sorted((p for p in self.pairs if p.verdict == "regressed"), key=lambda p: -(p.ci_low or 0))

    @property
    def improvements(self) -> list[Pair]:
        return sorted((p for p in self.pairs if p.verdict == "improved"), key=lambda p: p.ci_high or 0)

    @property
    def new_errors(self) -> list[StatusChange]:
        return [s for s in self.status_changes if s.is_regression]

    @property
    def regressed(self) -> bool:
        """Anything regressed: a slower job or an ok -> error transition."""
        return bool(self.regressions or self.new_errors)

    def counts(self) -> dict[str, int]:
        """Jobs per class: verdicts of ok pairs, inconclusive ones, status changes, jobs of one run only."""
        counts = {v: sum(p.verdict == v for p in self.pairs) for v in VERDICTS}
        counts["inconclusive"] = sum(p.verdict == "unchanged" and not p.conclusive for p in self.pairs)
        for kind in ("ok->error", "error->ok", "error->error"):
            counts[kind] = sum(s.kind == kind for s in self.status_changes)
        counts["only_baseline"] = len(self.only_baseline)
        counts["only_candidate"] = len(self.only_candidate)
        counts["artifact_changed"] = sum(p.artifact_changed for p in self.pairs)
        return counts

    def frame(self):
        """The ok pairs as a pandas DataFrame (one row per job, ``label`` added)."""
        import pandas as pd
        rows = [{"label": p.label, **asdict(p)} for p in self.pairs]
        return pd.DataFrame(rows)


def job_label(job: Mapping[str, Any]) -> str:
    """A short human label of a job: ``model variant | device runtime(.format) opts | bsN``."""
    options = job.get("options")
    if options is None:
        options = options_key(job.get("runtime_options"))
    opts = "" if options == "default" else f" [{options}]"
    return (f"{job['model']} {job['variant']} | {job['device']} {job['runtime']} (.{job['format']}){opts} "
            f"| bs{job['batch_size']}")


def _identity(record: Mapping[str, Any]) -> tuple:
    return (record["model"], record["variant"], record["format"], record["device"], record["runtime"],
            options_key(record.get("runtime_options")), int(record["batch_size"]))


def match_records(baseline: Iterable[Mapping[str, Any]], candidate: Iterable[Mapping[str, Any]]
                  ) -> tuple[list[tuple[dict, dict, str]], list[dict], list[dict]]:
    """``(pairs, only_baseline, only_candidate)``; each pair is ``(baseline, candidate, matched_by)``.

    First by ``job_key``; the rest by identity tuple, the same artifact hash
    preferred, an ambiguous identity left unmatched.
    """
    base = [dict(r) for r in baseline]
    cand = [dict(r) for r in candidate]
    by_key = {r["job_key"]: r for r in base}
    pairs: list[tuple[dict, dict, str]] = []
    used: set[int] = set()
    rest = []
    for c in cand:
        b = by_key.get(c["job_key"])
        if b is not None and id(b) not in used:
            used.add(id(b))
            pairs.append((b, c, "job_key"))
        else:
            rest.append(c)
    only_candidate = []
    for c in rest:
        options = [b for b in base if id(b) not in used and _identity(b) == _identity(c)]
        same_hash = [b for b in options if b["artifact_sha256"] == c["artifact_sha256"]]
        chosen = same_hash if same_hash else options
        if len(chosen) == 1:
            used.add(id(chosen[0]))
            pairs.append((chosen[0], c, "identity"))
        else:
            only_candidate.append(c)
    only_baseline = [b for b in base if id(b) not in used]
    return pairs, only_baseline, only_candidate


def _env_notes(b: Mapping[str, Any], c: Mapping[str, Any]) -> list[str]:
    """What changed in the environment between the two records: host, CPU, Python, runtime versions."""
    eb, ec = b.get("env") or {}, c.get("env") or {}
    notes = []
    if eb.get("hostname") and ec.get("hostname") and eb["hostname"] != ec["hostname"]:
        notes.append(f"host {eb['hostname']} -> {ec['hostname']}")
    cpu_b, cpu_c = (eb.get("cpu") or {}).get("model"), (ec.get("cpu") or {}).get("model")
    if cpu_b and cpu_c and cpu_b != cpu_c:
        notes.append(f"cpu {cpu_b} -> {cpu_c}")
    py_b, py_c = (eb.get("python") or {}).get("version"), (ec.get("python") or {}).get("version")
    if py_b and py_c and py_b != py_c:
        notes.append(f"python {py_b} -> {py_c}")
    rt_b, rt_c = eb.get("runtimes") or {}, ec.get("runtimes") or {}
    for name in sorted(set(rt_b) & set(rt_c)):
        if rt_b[name] != rt_c[name]:
            notes.append(f"{name} {rt_b[name]} -> {rt_c[name]}")
    return notes


def _common(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"job_key": record["job_key"], "model": record["model"], "variant": record["variant"],
            "format": record["format"], "device": record["device"], "runtime": record["runtime"],
            "options": options_key(record.get("runtime_options")), "batch_size": int(record["batch_size"])}


def _pair(b: dict, c: dict, matched_by: str, threshold: float, confidence: float, resamples: int,
          seed: int) -> Pair:
    notes = []
    if b.get("samples_ns") and c.get("samples_ns"):
        rng = np.random.default_rng([seed, zlib.crc32(c["job_key"].encode())])
        change = intervals.change_interval(b, c, resamples=resamples, confidence=confidence, rng=rng)
        if change.ci_low is None:
            notes.append(f"fewer than {MIN_SAMPLES} samples: no interval, not classified")
        elif change.method == "rounds":
            notes.append(f"resampled rounds ({change.rounds_baseline}/{change.rounds_candidate})")
    else:  # records read without samples: the point estimate only
        change = Change(float(c["median_ms"]) / float(b["median_ms"]) - 1, None, None, method="none")
        notes.append("no raw samples: no interval, not classified")
    verdict, conclusive = classify(change.ci_low, change.ci_high, threshold)
    artifact_changed = b["artifact_sha256"] != c["artifact_sha256"]
    if artifact_changed:
        notes.append("artifact changed")
    if matched_by != "job_key":
        notes.append(f"matched by identity (baseline key {b['job_key']})")
    notes += _env_notes(b, c)
    notes += [f"warning: {w}" for w in (c.get("warnings") or [])[:2]]
    return Pair(**_common(c), baseline_ms=float(b["median_ms"]), candidate_ms=float(c["median_ms"]),
                change=change.change, ci_low=change.ci_low, ci_high=change.ci_high, verdict=verdict,
                conclusive=conclusive, n_baseline=int(b.get("n") or len(b.get("samples_ns") or [])),
                n_candidate=int(c.get("n") or len(c.get("samples_ns") or [])),
                block_baseline=change.block_baseline, block_candidate=change.block_candidate,
                baseline_sha256=b["artifact_sha256"], candidate_sha256=c["artifact_sha256"],
                artifact_changed=artifact_changed, matched_by=matched_by, notes=notes, method=change.method,
                rounds_baseline=change.rounds_baseline, rounds_candidate=change.rounds_candidate)


def _error_text(record: Mapping[str, Any]) -> str:
    return f"[{record.get('error_stage')}] {record.get('error_message')}"


def _status_change(b: dict, c: dict) -> StatusChange:
    kind = f"{b['status']}->{c['status']}"
    message = _error_text(c) if c["status"] == "error" else f"was {_error_text(b)}"
    return StatusChange(**_common(c), baseline_status=b["status"], candidate_status=c["status"], kind=kind,
                        message=message, baseline_ms=b.get("median_ms") if b["status"] == "ok" else None,
                        artifact_changed=b["artifact_sha256"] != c["artifact_sha256"])


def compare_records(baseline: Iterable[Mapping[str, Any]], candidate: Iterable[Mapping[str, Any]], *,
                    threshold: float = DEFAULT_THRESHOLD, confidence: float = DEFAULT_CONFIDENCE,
                    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                    baseline_run: Mapping[str, Any] | None = None,
                    candidate_run: Mapping[str, Any] | None = None) -> Comparison:
    """Compare two runs' records job by job (records as :meth:`results.store.Store.records` returns them)."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a fraction in [0, 1), got {threshold}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"use at least 100 bootstrap resamples, got {resamples}")
    matched, only_b, only_c = match_records(baseline, candidate)
    pairs, changes = [], []
    for b, c, how in matched:
        if b["status"] == "ok" and c["status"] == "ok":
            pairs.append(_pair(b, c, how, threshold, confidence, resamples, seed))
        else:
            changes.append(_status_change(b, c))
    pairs.sort(key=lambda p: -p.change)
    slim = [{k: v for k, v in r.items() if k not in ("samples_ns", "env", "extra")} for r in only_b]
    slim_c = [{k: v for k, v in r.items() if k not in ("samples_ns", "env", "extra")} for r in only_c]
    return Comparison(baseline_run=dict(baseline_run or {}), candidate_run=dict(candidate_run or {}),
                      threshold=threshold, confidence=confidence, resamples=resamples, seed=seed, pairs=pairs,
                      status_changes=changes, only_baseline=slim, only_candidate=slim_c)


def compare_runs(store, baseline_id: str, candidate_id: str, **kwargs: Any) -> Comparison:
    """Compare two runs of a :class:`results.store.Store`; an unknown run raises ``UnknownRunError``."""
    from results.store import UnknownRunError

    runs = {}
    for run_id in (baseline_id, candidate_id):
        info = store.get_run(run_id)
        if info is None:
            raise UnknownRunError(f"no run {run_id!r} in {store.path}")
        runs[run_id] = info
    return compare_records(store.records(baseline_id), store.records(candidate_id),
                           baseline_run=runs[baseline_id], candidate_run=runs[candidate_id], **kwargs)
