"""`mmf zoo ...` commands."""
import typer

app = typer.Typer(no_args_is_help=True, help="Fetch, verify and install MMF zoo datasets and models.")
