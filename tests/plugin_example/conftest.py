"""The plug-in's own tests (tests/) need it installed: tests/ops/test_plugin.py runs them in a
process that has it, so this session, which has not, leaves them alone."""

collect_ignore = ["tests"]
