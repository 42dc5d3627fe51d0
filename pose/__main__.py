from pose.cli import app

if __name__ == "__main__":  # spawned worker processes import this module again; they must not rerun the CLI
    app()
