"""Non-Markovian tasks: the right action depends on something seen steps ago.

- ``envs.tasks.text_recall.TextRecallEnv``: text cue, distractor sentences, multiple-choice query.
- ``envs.tasks.tmaze.TMazeEnv``: vector cue-delay T-maze.
- ``envs.tasks.minigrid_memory.MiniGridMemoryEnv``: MiniGrid MemoryS7 as text (needs ``minigrid``).

Each module is imported on its own (by gymnasium's entry points); this package imports none.
"""
