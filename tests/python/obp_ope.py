"""Open Bandit Pipeline's off-policy estimates on a logged experiment.

Reads a CSV of the experiment's rewarded requests (`action` as an index,
`reward`, `pscore`: the propensity the log recorded) and prints, as JSON,
for each action taken as the evaluation policy ("everything to it"):
obp's IPW, SNIPW and DR estimates, DR with the reward model Weir uses (each
action's mean reward in the log).

Usage: obp_ope.py FILE.csv N_ACTIONS
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np

if importlib.util.find_spec("torch") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stand_ins"))

# `obp.ope`'s own __init__ imports its plots and, through `obp.types`,
# its neural policies: load the package without it, then the estimators
# module itself, unchanged.
_ope = types.ModuleType("obp.ope")
_ope.__path__ = importlib.util.find_spec("obp.ope").submodule_search_locations
sys.modules["obp.ope"] = _ope

from obp.ope.estimators import (  # noqa: E402
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
)

def main(path, n_actions):
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    action = data[:, 0].astype(int)
    reward = data[:, 1]
    pscore = data[:, 2]
    n = len(action)
    means = np.array([reward[action == a].mean() for a in range(n_actions)])
    q_hat = np.broadcast_to(means[None, :, None], (n, n_actions, 1)).copy()
    out = {}
    for target in range(n_actions):
        action_dist = np.zeros((n, n_actions, 1))
        action_dist[:, target, 0] = 1.0
        common = dict(reward=reward, action=action, pscore=pscore, action_dist=action_dist)
        out[str(target)] = {
            "ips": float(InverseProbabilityWeighting().estimate_policy_value(**common)),
            "snips": float(
                SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**common)
            ),
            "dr": float(
                DoublyRobust().estimate_policy_value(
                    **common, estimated_rewards_by_reg_model=q_hat
                )
            ),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
