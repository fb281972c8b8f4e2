"""hk for Slurm: the service's bridge (bridge.py), Slurm's two hooks (hooks.py), and what
both need to read and change Slurm's nodes (nodes.py). See docs/slurm.md."""
