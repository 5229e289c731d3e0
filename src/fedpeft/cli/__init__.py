"""Command-line interface: a typer app, one module per subcommand, thin over the library."""
