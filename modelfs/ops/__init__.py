"""Operations over versions: diff, merge, update types (sparse, low-rank, LoRA adapters).

Everything here goes through the `Repo` facade; nothing touches the store directly.
"""
