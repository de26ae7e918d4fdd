"""PyTorch CPU baseline for the cartpole-dqn job: gsurma/cartpole's DQN with the batched replay
update, timed over whole episodes; prints one JSON line.

    bench/.venv/bin/python bench/python/dqn_torch_bench.py --threads 1 --episodes 100

The agent is the one `worker/src/jobs/rl/dqn.rs` runs, written the usual PyTorch way:
  - Q network Linear(4,24) ReLU Linear(24,24) ReLU Linear(24,2), float32, Keras' init (glorot
    uniform kernels, zero biases); Adam lr 0.001, betas (0.9, 0.999), eps 1e-7 (Keras' settings).
  - gymnasium's CartPole-v1; epsilon-greedy with epsilon 1.0, times 0.995 per replay, >= 0.01;
    reward -1 on the step that ends an episode (the time limit included), 1 otherwise.
  - memory: deque(maxlen=1_000_000) of (s, a, r, s', terminal); after every step but an episode's
    last, once it holds 20: random.sample of 20, targets r (terminal) or r + 0.95 max_a' Q(s', a')
    (no grad), loss sum((Q(s, a) - y)^2) / (2 * 20) (Keras' MSE over both outputs, where the other
    output's target is its own value), one backward and one Adam step.
Episodes run to the end; the clock covers everything from the first reset to the last step
(acting, environment, memory, replay). Run it on an idle machine.
Output: {"torch", "threads", "episodes", "steps", "replays", "seconds", "episodes_per_s",
"steps_per_s", "mean_score_last_20", "loadavg_1m"}.
"""

import argparse
import json
import os
import random
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

GAMMA = 0.95
BATCH = 20


def glorot_(linear: nn.Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    model = nn.Sequential(nn.Linear(4, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 2))
    for layer in model:
        if isinstance(layer, nn.Linear):
            glorot_(layer)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, eps=1e-7)
    env = gym.make("CartPole-v1")
    memory: deque = deque(maxlen=1_000_000)
    epsilon = 1.0
    steps = replays = 0
    scores = []
    loadavg = os.getloadavg()[0]

    def replay() -> None:
        nonlocal epsilon, replays
        if len(memory) < BATCH:
            return
        batch = random.sample(memory, BATCH)
        states = torch.from_numpy(np.array([b[0] for b in batch], dtype=np.float32))
        actions = torch.tensor([b[1] for b in batch], dtype=torch.int64).unsqueeze(1)
        rewards = torch.tensor([b[2] for b in batch], dtype=torch.float32)
        next_states = torch.from_numpy(np.array([b[3] for b in batch], dtype=np.float32))
        terminal = torch.tensor([b[4] for b in batch], dtype=torch.float32)
        with torch.no_grad():
            y = rewards + GAMMA * model(next_states).max(1).values * (1.0 - terminal)
        taken = model(states).gather(1, actions).squeeze(1)
        loss = ((taken - y) ** 2).sum() / (2 * BATCH)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        replays += 1
        epsilon = max(0.01, epsilon * 0.995)

    start = time.perf_counter()
    for episode in range(args.episodes):
        state, _ = env.reset(seed=args.seed + episode)
        score = 0
        while True:
            score += 1
            steps += 1
            if np.random.rand() < epsilon:
                action = random.randrange(2)
            else:
                with torch.no_grad():
                    action = int(model(torch.from_numpy(state).unsqueeze(0)).argmax(1).item())
            next_state, reward, terminated, truncated, _ = env.step(action)
            terminal = terminated or truncated
            reward = -reward if terminal else reward
            memory.append((state, action, reward, next_state, terminal))
            state = next_state
            if terminal:
                scores.append(score)
                break
            replay()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "torch": torch.__version__, "threads": args.threads, "episodes": args.episodes, "steps": steps,
        "replays": replays, "seconds": seconds, "episodes_per_s": args.episodes / seconds,
        "steps_per_s": steps / seconds, "mean_score_last_20": float(np.mean(scores[-20:])),
        "loadavg_1m": loadavg,
    }))


if __name__ == "__main__":
    main()
