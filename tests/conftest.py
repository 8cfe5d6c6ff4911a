import os

os.environ.setdefault("SYNERGOS_TORCH_THREADS", "1")
