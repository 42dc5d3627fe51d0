from pose.cli import app

app()
