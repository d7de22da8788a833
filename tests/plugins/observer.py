"""A plugin that observes the lifecycle hooks and appends what it sees to $OBSERVER_LOG (JSON lines)."""
import json
import os

from autotl import hookimpl


def _log(kind, **data):
    with open(os.environ["OBSERVER_LOG"], "a") as fh:
        fh.write(json.dumps({"hook": kind, **data}) + "\n")


@hookimpl
def autotl_trial_finished(record):
    _log("trial_finished", number=record.number, state=record.state, epochs=record.epochs_run,
         backbone=record.backbone)


@hookimpl
def autotl_search_finished(result):
    _log("search_finished", study=result.study, best=(result.best or {}).get("trial"), n=len(result.trials))
