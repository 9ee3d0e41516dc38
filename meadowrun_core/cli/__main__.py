"""``python -m meadowrun_core.cli``: the ``meadowrun`` command."""

from meadowrun_core.cli import app

app(prog_name="meadowrun")
