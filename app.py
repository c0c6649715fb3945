"""Start the web app: `python app.py` serves it on http://127.0.0.1:7860."""

import os

from editing.models import DEFAULT_MODEL
from ui import build_demo

# No model is loaded here: the first Run loads it. EDITING_MODEL=tiny suits machines without the Hub.
demo = build_demo(default_model=os.environ.get("EDITING_MODEL", DEFAULT_MODEL))

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
