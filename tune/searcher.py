"""OptunaSearch that tells Optuna the truth about trials stopped early.

Ray's OptunaSearch tells a trial stopped by ASHA as COMPLETE with its early value, so TPE would
mix budgets. Here a trial that ends without error before the last epoch is told PRUNED, with the
value of every epoch it reported, the one that got it stopped included; intermediate values are
keyed by epoch (not Tune's iteration count, which restarts on resume). A diverged trial is told
COMPLETE with the worst value its worker reported, and the reason as the user attribute
``diverged``.
"""
from __future__ import annotations

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .warm import WARM


class StudySearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, budget: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs, self.budget = max_epochs, budget  # budget: the study's trials (0: no cap)
        self._reported: dict[str, set[int]] = {}  # epochs told to Optuna, per trial

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials:
            orphan = self._orphan()
            if orphan is not None:  # its parameters were drawn already: the new Tune trial runs them
                self._ot_trials[trial_id] = orphan
            elif self.budget and sum(WARM not in t.user_attrs for t in self._ot_study.get_trials(deepcopy=False)) \
                    >= self.budget:  # trials copied from another study (warm_start) are not this one's
                # every trial of the budget was asked already and is known or reused: a restored
                # search state older than Tune's would otherwise ask one more (seen: a seventh
                # trial of six, drawing the same parameters as an earlier one)
                return Searcher.FINISHED
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # lets the report join Tune trials to Optuna trials
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    def _orphan(self):
        """An Optuna trial a killed driver asked for after Tune last saved its state: running in
        the journal, unknown to this (restored) searcher. Reused, so the journal holds one
        record per trial; None when there is none (always, in a study never interrupted)."""
        import optuna

        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                return optuna.Trial(self._ot_study, t._trial_id)
        return None

    def _finished_in_journal(self, trial_id: str) -> bool:
        """Told already by a driver killed before Tune saved the trial as ended."""
        trial = self._ot_trials[trial_id]
        return self._ot_study._storage.get_trial(trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return  # Optuna keeps no intermediate values for multi-objective studies
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        epoch = int(result.get("epoch", 0))
        done = self._reported.setdefault(trial_id, set())
        if self.metric in result and "epoch" in result and epoch not in done:
            try:
                self._ot_trials[trial_id].report(result[self.metric], epoch)
            except UpdateFinishedTrialError:
                # a resumed study replays results of a trial that a killed driver had already
                # told Optuna as ended (Tune's saved state lagged): Optuna has them already
                pass
            done.add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        diverged = bool(result and result.get("diverged")) and trial_id in self._ot_trials
        if diverged and trial_id not in self._completed_trials:
            # complete with the worst value (the searcher learns to avoid the region), the reason
            # kept on the Optuna trial; not pruned: its early end says nothing about the budget
            self._ot_trials[trial_id].set_user_attr("diverged", str(result.get("diverged_reason", "diverged")))
        stopped_early = (not error and result and trial_id in self._ot_trials and not diverged
                         and int(result.get("epoch", self.max_epochs)) < self.max_epochs)
        if result and not error and trial_id in self._ot_trials and trial_id not in self._completed_trials \
                and not isinstance(self.metric, list):
            self._report(trial_id, result)  # the result a scheduler stopped the trial on never reaches on_trial_result
        if trial_id in self._ot_trials and trial_id not in self._completed_trials \
                and self._finished_in_journal(trial_id):
            self._completed_trials.add(trial_id)
            return
        if stopped_early and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)
