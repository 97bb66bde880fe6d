"""Expert and non-expert policies for collection, and single-episode rollouts.

``make_policy(spec, task, env, seed)`` with spec ``expert`` | ``random`` | ``noisy:<epsilon>`` |
``checkpoint:<path>``; ``rollout(task, policy, seed, ...) -> Episode`` runs one episode in this process.
Scripted experts exist for ``scripted_tasks()``.
"""

from viper.experts.base import NoisyPolicy, Policy, RandomPolicy
from viper.experts.policies import make_policy, scripted_tasks
from viper.experts.rollout import Episode, rollout

__all__ = ["Episode", "NoisyPolicy", "Policy", "RandomPolicy", "make_policy", "rollout", "scripted_tasks"]
