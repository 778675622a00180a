from gatewise.cli import app

app()
