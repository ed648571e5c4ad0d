"""Markdown descriptions (`mlflow.note.content`) of the experiment, cell and table runs, so that
the MLflow UI says what a run is, what its headline number is and which runs it was made from.
Links are the UI's own `#/experiments/<id>/runs/<run id>` routes."""
from __future__ import annotations

from typing import Protocol

from mlflow import MlflowClient

from diffinject.config.schema import ExperimentConfig


class WithClient(Protocol):
    """What the descriptions read runs through: tracking.client.Tracker, or anything with its `client`."""
    client: MlflowClient

HEADLINE = "unbiased_acc_pct"  # the paper's unbiased accuracy, %, 2 decimals

EXPERIMENT_NOTE = f"""\
DiffInject runs. **Headline metric: `{HEADLINE}`**, the accuracy (%, 2 decimals) on the unbiased
test split (on BFFHQ its bias-conflicting images only, as the references score it) of the weights
selected on the validation split: the paper's "unbiased accuracy"; `reported_acc` is the same
number as an unrounded fraction. From the same run: `reported_acc_best_test`, the best test
accuracy of any evaluation (what the reference repositories report), and `reported_acc_last`,
the last weights'. `test_acc` is always the whole test split's.

Runs by tag `diffinject.role`:
- `cell`: one (dataset, ratio, method, seed), with params `method`, `dataset`, `ratio`, `seed`;
  its description links the stage runs it used;
- `stage1` ... `stage4`: nested under the cell that built them; tag `method` is that cell's method,
  `stage.algorithm` what the stage itself trains; `selected_*` metrics are the selected weights'
  (`test_acc` on a stage run is the curve over steps);
- `table`: the table of one invocation; its metrics are the table's means and stds;
- `trial` and `ablation`: ablation sweeps.

Compare methods: search `tags.diffinject.role = 'cell' and tags.ratio = '1' and attributes.status =
'FINISHED'`, group by param `method`, add the column `unbiased_acc_pct`; for charts, set the eye menu
over the run list to "Show all runs" (they show the first 10 by default). README: "Comparing in the
MLflow UI".
"""

STAGES = {"stage1": "stage 1: GCE bias classifier, top-K set",
          "stage2": "stage 2: diffusion model (one per dataset, shared by its cells)",
          "stage3": "stage 3: synthetic set", "stage4": "stage 4: training curves, checkpoint"}


def run_link(experiment_id: str, run_id: str, text: str | None = None) -> str:
    return f"[{text or run_id}](#/experiments/{experiment_id}/runs/{run_id})"


def linked_run(tracker: WithClient, run_id: str) -> str:
    """A link to the run by its name, wherever its experiment; its id when the store lacks it."""
    from mlflow.exceptions import MlflowException

    try:
        run = tracker.client.get_run(run_id)
    except MlflowException:
        return f"`{run_id}` (not in this tracking store)"
    return run_link(run.info.experiment_id, run_id, run.info.run_name)


def _pct(metrics: dict, key: str) -> str:
    return f"{100.0 * metrics[key]:.2f}%" if key in metrics else "—"


def cell_note(tracker: WithClient, cfg: ExperimentConfig, method: str, metrics: dict,
              stages: list[tuple[str, str, str]]) -> str:
    """A cell run's description: its numbers, and a table of (stage, run id, how it came about)."""
    selected = metrics.get("selected_step")
    how = (f"the weights of step {int(selected)} of {int(metrics['step'])}, selected by "
           f"`classifier.select = {cfg.classifier.select}`" if selected is not None and "step" in metrics else
           f"selected by `classifier.select = {cfg.classifier.select}`")
    lines = [f"**{method}** on {cfg.data.dataset} at {cfg.data.ratio}% bias-conflicting samples, seed {cfg.run.seed}.",
             "",
             f"Unbiased accuracy **{_pct(metrics, 'reported_acc')}** (`{HEADLINE}`); aligned "
             f"{_pct(metrics, 'test_aligned_acc')}, conflicting {_pct(metrics, 'test_conflicting_acc')}; {how}. "
             f"Best test accuracy during training (the references' selection): "
             f"{_pct(metrics, 'reported_acc_best_test')}; last weights: {_pct(metrics, 'reported_acc_last')}."]
    if stages:
        lines += ["", "| stage | run | |", "|---|---|---|"]
        lines += [f"| {STAGES.get(stage, stage)} | {linked_run(tracker, run_id)} | {origin} |"
                  for stage, run_id, origin in stages]
    return "\n".join(lines) + "\n"
