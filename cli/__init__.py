"""The Typer command line of reprscope (installed as ``reprscope_cli``)."""
