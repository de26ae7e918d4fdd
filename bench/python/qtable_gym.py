"""Tabular Q-learning on gymnasium's CartPole-v1: the Python reference for the speed of `cartpole-qtable`.

The algorithm is the Rust job's (worker/src/jobs/rl/qtable.rs), written the way a lab notebook would:
- each observation binned into DISCRETE_STEPS equal bins over the same bounds, clamped at the ends;
- Q table of zeros, shape (steps, steps, steps, steps, 2);
- Q[s, a] += lr * (r + gamma * max Q[s'] * (1 - terminated) - Q[s, a]), truncation still bootstraps;
- epsilon-greedy with epsilon = max(min, start * decay**episode), ties broken at random or to the left.

Usage:

    pip install gymnasium
    python bench/python/qtable_gym.py --episodes 10000

Prints one JSON line: {"episodes": N, "seconds": S, "episodes_per_sec": R, "env_steps": T,
"mear_last_window": M}. Episodes get longer as the agent learns, so compare runs with the same
parameters (and look at env_steps and mear_last_window to see that they learned alike).
"""

import argparse
import json
import time

import gymnasium as gym
import numpy as np

# x, x_dot, theta, theta_dot: the same bounds as OBSERVATION_BOUNDS in qtable.rs.
LOW = np.array([-2.4, -3.0, -0.21, -3.5])
HIGH = np.array([2.4, 3.0, 0.21, 3.5])


def discretize(obs, steps):
    bins = ((obs - LOW) / (HIGH - LOW) * steps).astype(int)
    return tuple(np.clip(bins, 0, steps - 1))


def train(args):
    rng = np.random.default_rng(args.seed)
    env = gym.make("CartPole-v1")
    env.reset(seed=args.seed)
    steps = args.discrete_steps
    q = np.zeros((steps, steps, steps, steps, 2))
    rewards = []
    env_steps = 0

    for episode in range(args.episodes):
        epsilon = max(args.epsilon_min, args.epsilon_start * args.epsilon_decay**episode)
        obs, _ = env.reset()
        state = discretize(obs, steps)
        total_reward = 0.0
        done = False
        while not done:
            if rng.random() < epsilon:
                action = int(rng.integers(2))
            elif args.tie_break == "left":
                action = int(np.argmax(q[state]))
            else:
                action = int(rng.choice(np.flatnonzero(q[state] == q[state].max())))
            obs, reward, terminated, truncated, _ = env.step(action)
            next_state = discretize(obs, steps)
            best_next = 0.0 if terminated else np.max(q[next_state])
            q[state + (action,)] += args.lr * (reward + args.gamma * best_next - q[state + (action,)])
            state = next_state
            total_reward += reward
            env_steps += 1
            done = terminated or truncated
        rewards.append(total_reward)

    return rewards, env_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--discrete-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--epsilon-start", type=float, default=1.0)
    parser.add_argument("--epsilon-decay", type=float, default=0.999)
    parser.add_argument("--epsilon-min", type=float, default=0.01)
    parser.add_argument("--tie-break", choices=["random", "left"], default="random")
    parser.add_argument("--report-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    rewards, env_steps = train(args)
    seconds = time.perf_counter() - started

    last_window = rewards[-args.report_every :]
    print(
        json.dumps(
            {
                "episodes": args.episodes,
                "seconds": seconds,
                "episodes_per_sec": args.episodes / seconds,
                "env_steps": env_steps,
                "mear_last_window": sum(last_window) / len(last_window),
            }
        )
    )


if __name__ == "__main__":
    main()
