"""Start the NEAT Studio web app on http://127.0.0.1:7860 with the embedded default model.

Same as `python -m neat_studio serve`; see that command's --help for options."""
import sys

from neat_studio.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
