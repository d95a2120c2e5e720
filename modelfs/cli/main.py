"""The `modelfs` program: the app's group with every command group's commands added.

Each command module imports `cli.app` and lists its commands; this module alone puts them
together, so nothing registers itself as a side effect of being imported.
"""

from __future__ import annotations

from modelfs.cli.app import cli, pipe_closed
from modelfs.cli.config_cmds import COMMANDS as CONFIG_COMMANDS
from modelfs.cli.draft_cmds import COMMANDS as DRAFT_COMMANDS
from modelfs.cli.everyday_cmds import COMMANDS as EVERYDAY_COMMANDS
from modelfs.cli.history_cmds import COMMANDS as HISTORY_COMMANDS
from modelfs.cli.mount_cmds import mount_command, umount_command
from modelfs.cli.ops_cmds import COMMANDS as OPS_COMMANDS
from modelfs.cli.recipe_cmds import COMMANDS as RECIPE_COMMANDS
from modelfs.cli.remote_cmds import COMMANDS as REMOTE_COMMANDS
from modelfs.cli.store_cmds import COMMANDS as STORE_COMMANDS
from modelfs.cli.test_cmds import COMMANDS as TEST_COMMANDS
from modelfs.heap import keep_freed_memory

for _command in [*STORE_COMMANDS, *HISTORY_COMMANDS, *DRAFT_COMMANDS, mount_command, umount_command,
                 *OPS_COMMANDS, *TEST_COMMANDS, *RECIPE_COMMANDS, *CONFIG_COMMANDS,
                 *REMOTE_COMMANDS, *EVERYDAY_COMMANDS]:
    cli.add_command(_command)


def main() -> None:
    """The console script (`[project.scripts] modelfs`), and `python -m modelfs.cli.main`."""
    keep_freed_memory()  # export and import decode MBs per chunk, as the mount does
    try:
        cli(prog_name="modelfs")
    except BrokenPipeError:  # raised outside a command (by click's own output)
        pipe_closed()


__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
