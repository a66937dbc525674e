from mmsocial.cli import app

app()
